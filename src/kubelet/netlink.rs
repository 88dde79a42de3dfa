//! A small blocking rtnetlink (`NETLINK_ROUTE`) client for the pod network: what [`super::network`]
//! used to run `ip` for. Links (create a bridge or a veth pair, set one up and under a master,
//! delete one, look up an index), addresses and a default route. One request at a time, each
//! acknowledged by the kernel, so an error comes back as the errno `ip` would have printed.
//!
//! A netlink socket works in the network namespace it was opened in, whatever namespace the
//! thread using it moves to later. That lets one thread configure both ends of a pod's veth
//! pair: one socket opened in the node's namespace, one in the pod's.
//!
//! Messages are built by hand ([`Msg`]), in the layout of `linux/netlink.h` and
//! `linux/rtnetlink.h` (native byte order, attributes padded to 4 bytes), the same requests
//! iproute2 sends for the equivalent `ip` commands.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

// linux/netlink.h
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

// linux/rtnetlink.h
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const RTA_GATEWAY: u16 = 5;

// linux/if_link.h, linux/veth.h, linux/if_addr.h
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

const IFF_UP: u32 = libc::IFF_UP as u32;
const AF_INET: u8 = libc::AF_INET as u8;

/// Room for any answer to the requests below (an acknowledgement echoes the request; a link's
/// description with its statistics is a few KiB).
const RECV_BUFFER: usize = 64 * 1024;

/// A link by index or by name (the kernel accepts either in link requests).
#[derive(Clone, Copy, Debug)]
pub enum Link<'a> {
    Index(u32),
    Name(&'a str),
}

/// A netlink request under construction: header, fixed part, attributes.
#[derive(Debug)]
struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(kind: u16, flags: u16) -> Msg {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&kind.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        Msg { buf }
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// The fixed part after the header (`ifinfomsg`, `ifaddrmsg`, `rtmsg`).
    fn fixed(&mut self, bytes: &[u8]) -> &mut Msg {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Msg {
        let len = u16::try_from(4 + value.len()).expect("attributes here are a few bytes");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
        self
    }

    fn attr_u32(&mut self, kind: u16, value: u32) -> &mut Msg {
        self.attr(kind, &value.to_ne_bytes())
    }

    /// A NUL-terminated string, as iproute2 sends interface names.
    fn attr_str(&mut self, kind: u16, value: &str) -> &mut Msg {
        let mut v = value.as_bytes().to_vec();
        v.push(0);
        self.attr(kind, &v)
    }

    /// Opens a nested attribute; its length is filled in by [`Msg::end_nest`].
    fn begin_nest(&mut self, kind: u16) -> usize {
        let at = self.buf.len();
        self.attr(kind, &[]);
        at
    }

    fn end_nest(&mut self, at: usize) -> &mut Msg {
        let len = u16::try_from(self.buf.len() - at).expect("nested attributes here are small");
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn link(&mut self, link: Link<'_>, flags: u32, change: u32) -> &mut Msg {
        let index = match link {
            Link::Index(i) => i,
            Link::Name(_) => 0,
        };
        self.fixed(&ifinfomsg(index, flags, change));
        if let Link::Name(name) = link {
            self.attr_str(IFLA_IFNAME, name);
        }
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).expect("requests here are small");
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// `struct ifinfomsg`: family, padding, type, index, flags, change mask.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// The messages in one datagram from the kernel: (type, sequence number, body).
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let head = buf.get(at..at + NLMSG_HDRLEN)?;
        let len = u32::from_ne_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
        let body = buf.get(at + NLMSG_HDRLEN..at + len.max(NLMSG_HDRLEN))?;
        let kind = u16::from_ne_bytes(head[4..6].try_into().expect("2 bytes"));
        let seq = u32::from_ne_bytes(head[8..12].try_into().expect("4 bytes"));
        at += (len.max(NLMSG_HDRLEN) + 3) & !3;
        Some((kind, seq, body))
    })
}

/// A `NETLINK_ROUTE` socket in the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    pub fn open() -> io::Result<Socket> {
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all zero but the family means "kernel, assign my port".
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let size = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: addr is a valid sockaddr_nl of the size given.
        if unsafe { libc::bind(fd.as_raw_fd(), &addr as *const libc::sockaddr_nl as *const libc::sockaddr, size) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket { fd, seq: 0, buf: vec![0; RECV_BUFFER] })
    }

    /// Sends one request and waits for its acknowledgement.
    fn request(&mut self, msg: Msg) -> io::Result<Option<u32>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let out = msg.finish(seq);
        // SAFETY: sockaddr_nl is plain data; all zero but the family addresses the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: out and kernel are valid for the lengths given.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    out.as_ptr().cast(),
                    out.len(),
                    0,
                    &kernel as *const libc::sockaddr_nl as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let mut index = None;
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for (kind, s, body) in messages(&self.buf[..n as usize]) {
                if s != seq {
                    continue; // an answer to an earlier request that failed half-way
                }
                if kind == NLMSG_ERROR && body.len() >= 4 {
                    let errno = i32::from_ne_bytes(body[0..4].try_into().expect("4 bytes"));
                    return if errno == 0 { Ok(index) } else { Err(io::Error::from_raw_os_error(-errno)) };
                }
                // A link's description (for link_index) comes before the acknowledgement.
                if kind == RTM_NEWLINK && body.len() >= 16 {
                    index = Some(u32::from_ne_bytes(body[4..8].try_into().expect("4 bytes")));
                }
            }
        }
    }

    /// The index of a link (`ENODEV` if there is none by that name).
    pub fn link_index(&mut self, name: &str) -> io::Result<u32> {
        let mut m = Msg::new(RTM_GETLINK, 0);
        m.link(Link::Name(name), 0, 0);
        self.request(m)?.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no link in the kernel's answer"))
    }

    /// `ip link add name NAME type bridge`.
    pub fn add_bridge(&mut self, name: &str) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.link(Link::Name(name), 0, 0);
        let info = m.begin_nest(IFLA_LINKINFO);
        m.attr(IFLA_INFO_KIND, b"bridge").end_nest(info);
        self.request(m).map(drop)
    }

    /// `ip link add NAME type veth peer name PEER netns NS`, with `peer_netns` an open
    /// descriptor of the peer's network namespace.
    pub fn add_veth(&mut self, name: &str, peer: &str, peer_netns: RawFd) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.link(Link::Name(name), 0, 0);
        let info = m.begin_nest(IFLA_LINKINFO);
        m.attr(IFLA_INFO_KIND, b"veth");
        let data = m.begin_nest(IFLA_INFO_DATA);
        let p = m.begin_nest(VETH_INFO_PEER);
        m.fixed(&ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, peer);
        m.attr_u32(IFLA_NET_NS_FD, u32::try_from(peer_netns).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?);
        m.end_nest(p).end_nest(data).end_nest(info);
        self.request(m).map(drop)
    }

    /// `ip link set LINK [master INDEX] up`.
    pub fn set_up(&mut self, link: Link<'_>, master: Option<u32>) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWLINK, 0);
        m.link(link, IFF_UP, IFF_UP);
        if let Some(master) = master {
            m.attr_u32(IFLA_MASTER, master);
        }
        self.request(m).map(drop)
    }

    /// `ip link del NAME` (`ENODEV` if there is none).
    pub fn del_link(&mut self, name: &str) -> io::Result<()> {
        let mut m = Msg::new(RTM_DELLINK, 0);
        m.link(Link::Name(name), 0, 0);
        self.request(m).map(drop)
    }

    /// `ip addr add IP/PREFIX dev INDEX`, or `ip addr replace` with `replace`.
    pub fn add_addr(&mut self, index: u32, ip: Ipv4Addr, prefix: u8, replace: bool) -> io::Result<()> {
        let flags = NLM_F_CREATE | if replace { NLM_F_REPLACE } else { NLM_F_EXCL };
        let mut m = Msg::new(RTM_NEWADDR, flags);
        let mut ifa = [0u8; 8];
        ifa[0] = AF_INET;
        ifa[1] = prefix;
        ifa[3] = RT_SCOPE_UNIVERSE;
        ifa[4..8].copy_from_slice(&index.to_ne_bytes());
        m.fixed(&ifa).attr(IFA_LOCAL, &ip.octets()).attr(IFA_ADDRESS, &ip.octets());
        self.request(m).map(drop)
    }

    /// `ip route add default via GATEWAY`.
    pub fn add_default_route(&mut self, gateway: Ipv4Addr) -> io::Result<()> {
        let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL);
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let rtm = [AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0, 0, 0, 0];
        m.fixed(&rtm).attr(RTA_GATEWAY, &gateway.octets());
        self.request(m).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes(b[at..at + 2].try_into().expect("2 bytes"))
    }

    #[test]
    fn a_veth_request_nests_its_peer_with_lengths_that_add_up() {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL);
        m.link(Link::Name("rkvabc"), 0, 0);
        let info = m.begin_nest(IFLA_LINKINFO);
        m.attr(IFLA_INFO_KIND, b"veth");
        let data = m.begin_nest(IFLA_INFO_DATA);
        let p = m.begin_nest(VETH_INFO_PEER);
        m.fixed(&ifinfomsg(0, 0, 0)).attr_str(IFLA_IFNAME, "eth0").attr_u32(IFLA_NET_NS_FD, 7);
        m.end_nest(p).end_nest(data).end_nest(info);
        let b = m.finish(9);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().expect("len")) as usize, b.len());
        assert_eq!(b.len() % 4, 0);
        assert_eq!(u16_at(&b, 4), RTM_NEWLINK);
        assert_eq!(u16_at(&b, 6), NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().expect("seq")), 9);
        // ifinfomsg, then IFLA_IFNAME "rkvabc\0" (4 + 7, padded to 12), then IFLA_LINKINFO up to the end.
        let name = NLMSG_HDRLEN + 16;
        assert_eq!((u16_at(&b, name), u16_at(&b, name + 2)), (11, IFLA_IFNAME));
        assert_eq!(&b[name + 4..name + 11], b"rkvabc\0");
        let info = name + 12;
        assert_eq!((u16_at(&b, info) as usize, u16_at(&b, info + 2)), (b.len() - info, IFLA_LINKINFO));
        assert_eq!((u16_at(&b, info + 4), u16_at(&b, info + 6)), (8, IFLA_INFO_KIND));
        let data = info + 12;
        assert_eq!((u16_at(&b, data) as usize, u16_at(&b, data + 2)), (b.len() - data, IFLA_INFO_DATA));
        let peer = data + 4;
        assert_eq!((u16_at(&b, peer) as usize, u16_at(&b, peer + 2)), (b.len() - peer, VETH_INFO_PEER));
        // The peer: its own ifinfomsg, name and namespace descriptor.
        let peer_name = peer + 4 + 16;
        assert_eq!(&b[peer_name + 4..peer_name + 9], b"eth0\0");
        let fd = peer_name + 12;
        assert_eq!((u16_at(&b, fd), u16_at(&b, fd + 2)), (8, IFLA_NET_NS_FD));
        assert_eq!(u32::from_ne_bytes(b[fd + 4..fd + 8].try_into().expect("fd")), 7);
        assert_eq!(fd + 8, b.len());
    }

    #[test]
    fn answers_split_into_messages_and_stop_at_a_truncated_one() {
        let mut buf = Msg::new(RTM_NEWLINK, 0).fixed(&ifinfomsg(5, 0, 0)).buf.clone();
        let len = buf.len() as u32;
        buf[0..4].copy_from_slice(&len.to_ne_bytes());
        buf[8..12].copy_from_slice(&3u32.to_ne_bytes());
        let mut ack = vec![0u8; NLMSG_HDRLEN + 4];
        let ack_len = ack.len() as u32;
        ack[0..4].copy_from_slice(&ack_len.to_ne_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack[8..12].copy_from_slice(&3u32.to_ne_bytes());
        buf.extend_from_slice(&ack);
        buf.extend_from_slice(&[40, 0, 0, 0, 2, 0]); // a header cut short
        let got: Vec<(u16, u32, usize)> = messages(&buf).map(|(k, s, b)| (k, s, b.len())).collect();
        assert_eq!(got, vec![(RTM_NEWLINK, 3, 16), (NLMSG_ERROR, 3, 4)]);
    }

    #[test]
    fn the_kernel_answers_a_lookup_of_the_loopback_link() {
        // Needs no privileges: every network namespace has `lo` at index 1.
        let mut s = Socket::open().expect("netlink socket");
        assert_eq!(s.link_index("lo").expect("lo"), 1);
        let err = s.link_index("rkube-no-such").expect_err("no such link");
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
        assert_eq!(s.link_index("lo").expect("lo again"), 1, "the socket stays usable after an error");
    }
}
