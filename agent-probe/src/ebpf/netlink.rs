//! The few rtnetlink and namespace operations the probe needs beyond aya:
//! removing a clsact qdisc it added, checking that no filter still hangs
//! off it, reading an interface's link type, and running a cleanup inside
//! the network namespace an attachment was made in.

use nix::sched::CloneFlags;
use nix::sys::socket::{
    bind, recv, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

const RTM_DELQDISC: u16 = 37;
const RTM_NEWTFILTER: u16 = 44;
const RTM_GETTFILTER: u16 = 46;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCA_KIND: u16 = 1;
const NLMSG_HDRLEN: usize = 16;
const TCMSG_LEN: usize = 20;
/// clsact's handle (ffff:) and parent, and its ingress/egress filter parents.
const TC_H_CLSACT: u32 = 0xffff_fff1;
const CLSACT_HANDLE: u32 = 0xffff_0000;
const CLSACT_INGRESS: u32 = 0xffff_fff2;
const CLSACT_EGRESS: u32 = 0xffff_fff3;

fn tc_request(
    ty: u16,
    flags: u16,
    ifindex: u32,
    handle: u32,
    parent: u32,
    kind: Option<&str>,
) -> Vec<u8> {
    let mut msg = Vec::with_capacity(64);
    msg.extend_from_slice(&0u32.to_ne_bytes()); // length, patched below
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
                                                // struct tcmsg: family, 3 pad bytes, ifindex, handle, parent, info
    msg.extend_from_slice(&[0u8; 4]);
    msg.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    msg.extend_from_slice(&handle.to_ne_bytes());
    msg.extend_from_slice(&parent.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    if let Some(kind) = kind {
        let payload_len = kind.len() + 1;
        msg.extend_from_slice(&((4 + payload_len) as u16).to_ne_bytes());
        msg.extend_from_slice(&TCA_KIND.to_ne_bytes());
        msg.extend_from_slice(kind.as_bytes());
        msg.push(0);
        while msg.len() % 4 != 0 {
            msg.push(0);
        }
    }
    let len = msg.len() as u32;
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    msg
}

fn open() -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    Ok(fd)
}

/// Sends one request and returns the payloads of the reply messages of
/// type `want` (for dumps), failing on a netlink error.
fn transact(req: &[u8], want: u16) -> io::Result<Vec<Vec<u8>>> {
    let fd = open()?;
    send(fd.as_raw_fd(), req, MsgFlags::empty())?;
    let dump = u16::from_ne_bytes([req[6], req[7]]) & NLM_F_DUMP != 0;
    let mut replies = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        let mut off = 0;
        while off + NLMSG_HDRLEN <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
            let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            if len < NLMSG_HDRLEN || off + len > n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated netlink reply",
                ));
            }
            let payload = &buf[off + NLMSG_HDRLEN..off + len];
            match ty {
                NLMSG_DONE => return Ok(replies),
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes(payload[..4].try_into().expect("4 bytes"));
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    if !dump {
                        return Ok(replies);
                    }
                }
                t if t == want => replies.push(payload.to_vec()),
                _ => {}
            }
            off += (len + 3) & !3;
        }
    }
}

/// Removes the clsact qdisc of `ifindex` (and with it every filter on it).
pub fn delete_clsact(ifindex: u32) -> io::Result<()> {
    let req = tc_request(
        RTM_DELQDISC,
        NLM_F_ACK,
        ifindex,
        CLSACT_HANDLE,
        TC_H_CLSACT,
        Some("clsact"),
    );
    transact(&req, 0).map(|_| ())
}

/// Number of tc filters on the clsact ingress and egress hooks of `ifindex`.
pub fn clsact_filter_count(ifindex: u32) -> io::Result<usize> {
    let mut count = 0;
    for parent in [CLSACT_INGRESS, CLSACT_EGRESS] {
        let req = tc_request(RTM_GETTFILTER, NLM_F_DUMP, ifindex, 0, parent, None);
        let replies = match transact(&req, RTM_NEWTFILTER) {
            Ok(r) => r,
            // No clsact qdisc at all: nothing attached.
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => Vec::new(),
            Err(e) => return Err(e),
        };
        // Each filter comes with a chain/priority head whose handle is 0.
        count += replies
            .iter()
            .filter(|p| {
                p.len() >= TCMSG_LEN
                    && u32::from_ne_bytes(p[8..12].try_into().expect("4 bytes")) != 0
            })
            .count();
    }
    Ok(count)
}

/// The link-layer type (ARPHRD_*) of `iface` in the calling thread's network namespace.
pub fn link_type(iface: &str) -> io::Result<u16> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; the name is NUL-terminated within IFNAMSIZ.
    let mut ifr: nix::libc::ifreq = unsafe { std::mem::zeroed() };
    if iface.len() >= ifr.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(iface.bytes()) {
        *dst = src as nix::libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr of the ifreq we pass.
    let rc = unsafe { nix::libc::ioctl(sock.as_raw_fd(), nix::libc::SIOCGIFHWADDR, &mut ifr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel wrote the hwaddr member.
    Ok(unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_family })
}

/// A network namespace: an open handle and its identity (device, inode).
pub struct Netns {
    pub file: File,
    pub id: (u64, u64),
}

impl Netns {
    pub fn open(path: &Path) -> io::Result<Netns> {
        let file = File::open(path)?;
        let st = nix::sys::stat::fstat(file.as_fd())?;
        Ok(Netns {
            file,
            id: (st.st_dev, st.st_ino),
        })
    }

    /// The calling thread's network namespace.
    pub fn current() -> io::Result<Netns> {
        Netns::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// Finds a namespace by identity among the calling thread's, init's and
    /// the named ones (`ip netns`); `None` when it no longer exists there.
    pub fn find(id: (u64, u64)) -> Option<Netns> {
        let mut candidates = vec![
            "/proc/thread-self/ns/net".into(),
            std::path::PathBuf::from("/proc/1/ns/net"),
        ];
        if let Ok(dir) = std::fs::read_dir("/run/netns") {
            candidates.extend(dir.flatten().map(|e| e.path()));
        }
        candidates
            .iter()
            .filter_map(|p| Netns::open(p).ok())
            .find(|ns| ns.id == id)
    }

    /// Runs `f` inside this namespace on the calling thread, then returns to
    /// the thread's own (entering another one needs CAP_SYS_ADMIN).
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        let home = Netns::current()?;
        if home.id == self.id {
            return Ok(f());
        }
        nix::sched::setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)?;
        let out = f();
        nix::sched::setns(home.file.as_fd(), CloneFlags::CLONE_NEWNET)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clsact_delete_request_layout() {
        let req = tc_request(
            RTM_DELQDISC,
            NLM_F_ACK,
            7,
            CLSACT_HANDLE,
            TC_H_CLSACT,
            Some("clsact"),
        );
        // header 16 + tcmsg 20 + attribute (4 + "clsact\0" = 11, padded to 12)
        assert_eq!(req.len(), 48);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()), 48);
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), RTM_DELQDISC);
        assert_eq!(
            u16::from_ne_bytes([req[6], req[7]]),
            NLM_F_REQUEST | NLM_F_ACK
        );
        assert_eq!(i32::from_ne_bytes(req[20..24].try_into().unwrap()), 7);
        assert_eq!(
            u32::from_ne_bytes(req[24..28].try_into().unwrap()),
            CLSACT_HANDLE
        );
        assert_eq!(
            u32::from_ne_bytes(req[28..32].try_into().unwrap()),
            TC_H_CLSACT
        );
        assert_eq!(u16::from_ne_bytes([req[36], req[37]]), 11);
        assert_eq!(&req[40..47], b"clsact\0");
    }

    #[test]
    fn loopback_is_an_ethernet_like_link() {
        // ARPHRD_LOOPBACK = 772
        assert_eq!(link_type("lo").unwrap(), 772);
        assert!(link_type("no-such-if0").is_err());
    }

    #[test]
    fn current_namespace_is_found_by_identity() {
        let here = Netns::current().unwrap();
        let found = Netns::find(here.id).unwrap();
        assert_eq!(found.id, here.id);
        assert_eq!(found.run(|| 5).unwrap(), 5);
    }
}
