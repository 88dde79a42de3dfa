# Sourced by the docker/ scripts: runs Compose as `compose ARGS...`, whichever form this machine
# has: the v2 plugin (`docker compose`) or the v1 command (`docker-compose`, Debian's 1.29).
# COMPOSE="docker-compose" (or "docker compose") forces one. Always uses the repository's
# docker-compose.yml; the project name is Compose's default (the checkout's directory name)
# unless COMPOSE_PROJECT_NAME is set, so plain `docker-compose exec m1 ...` finds the cluster.
# shellcheck shell=bash

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${COMPOSE:-}" ]; then
  read -r -a compose_cmd <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose_cmd=(docker-compose)
else
  echo "neither docker compose nor docker-compose is installed" >&2
  exit 1
fi

compose() {
  (cd "$repo_root" && "${compose_cmd[@]}" -f docker-compose.yml "$@")
}

# The health status Docker reports for a service's container: starting, healthy, unhealthy,
# or "missing" when it has no container.
health() {
  local id
  id="$(compose ps -q "$1" 2>/dev/null)"
  if [ -z "$id" ]; then echo missing; return; fi
  docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id" \
    2>/dev/null || echo missing
}
