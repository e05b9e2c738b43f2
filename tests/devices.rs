//! Graphical tools and devices, on the real engine and a real X server: a
//! `gui` image's tool draws a window on the caller's display (an Xvfb,
//! looked at with `xwd`), other images' tools get no display; a device node
//! passes with access decided by the caller's groups; a missing device and
//! GPUs without a GPU runtime are one clear line and exit 126.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// An X server of its own (no screen, no TCP), on the display number it
/// picks; stopped on drop.
struct Xvfb {
    child: Child,
    display: String,
    log: std::path::PathBuf,
}

impl Xvfb {
    fn start() -> Xvfb {
        let log = std::path::PathBuf::from(format!("/tmp/odfs-test-xvfb-{}.log", std::process::id()));
        let mut child = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", "320x240x24", "-nolisten", "tcp", "-br"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("Xvfb (scripts/setup installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let display = format!(":{}", line.trim());
        assert!(display.len() > 1, "Xvfb gave no display number");
        Xvfb { child, display, log }
    }

    /// The whole screen as `xwd` dumps it. A window that goes while xwd
    /// walks the tree makes it fail (BadWindow): it is asked again.
    fn screenshot(&self) -> Vec<u8> {
        let mut said = String::new();
        for _ in 0..10 {
            let o = Command::new("xwd").args(["-root", "-silent", "-display", &self.display]).output().expect("xwd (scripts/setup installs x11-apps)");
            if o.status.success() {
                return o.stdout;
            }
            said = stderr(&o);
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("xwd: {said}")
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // SIGTERM: the server removes its socket and lock file.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Pure red pixels in an `xwd` dump of a 32-bit TrueColor screen.
fn red_pixels(xwd: &[u8]) -> usize {
    let field = |i: usize| u32::from_be_bytes(xwd[i * 4..i * 4 + 4].try_into().unwrap());
    let (header, byte_order, bits, ncolors) = (field(0) as usize, field(7), field(11), field(19) as usize);
    let (red, green, blue) = (field(14), field(15), field(16));
    assert_eq!(bits, 32, "a 24-bit screen is dumped 32 bits a pixel");
    xwd[header + ncolors * 12..]
        .chunks_exact(4)
        .map(|p| if byte_order == 0 { u32::from_le_bytes(p.try_into().unwrap()) } else { u32::from_be_bytes(p.try_into().unwrap()) })
        .filter(|v| v & red == red && v & (green | blue) == 0)
        .count()
}

const DISPLAY_TOOL: &str = "/usr/bin/display-im6.q16";

#[test]
fn a_graphical_tool_draws_on_the_caller_s_display_and_others_get_none() {
    let x = Xvfb::start();
    let catalog = format!(
        "[image.gui]\nref = \"odfs/media:latest\"\nnetwork = \"none\"\ngui = true\n\n\
         [command.display]\nimage = \"gui\"\npath = \"{DISPLAY_TOOL}\"\n\n[command.genv]\nimage = \"gui\"\npath = \"/usr/bin/env\"\n\n\
         [image.plain]\nref = \"odfs/media:latest\"\nnetwork = \"none\"\n\n\
         [command.pdisplay]\nimage = \"plain\"\npath = \"{DISPLAY_TOOL}\"\n\n[command.penv]\nimage = \"plain\"\npath = \"/usr/bin/env\"\n"
    );
    let m = TestMount::new(&catalog);
    let user = TestUser::new();
    let blank = x.screenshot();
    assert_eq!(red_pixels(&blank), 0);
    // The user reaches the display natively first.
    let o = user.cmd("xwd").args(["-root", "-silent", "-display", &x.display]).output().unwrap();
    assert!(o.status.success(), "the X server refuses the user itself: {}\n{}", stderr(&o), std::fs::read_to_string(&x.log).unwrap_or_default());
    // As a user of the machine, as natively: a red square at the top left.
    let shim = m.shim("display");
    let mut tool = user
        .cmd(&shim)
        .args(["-geometry", "+0+0", "-size", "80x80", "xc:red"])
        .env("DISPLAY", &x.display)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stop = Defer(|| {
        let _ = Command::new("pkill").args(["-f", "xc:red"]).status();
    });
    let drawn = eventually(Duration::from_secs(30), || red_pixels(&x.screenshot()) >= 80 * 80);
    let _ = tool.kill();
    let out = tool.wait_with_output().unwrap();
    assert!(
        drawn,
        "no window on {}: {} red pixels; {}\nXvfb: {}\n{}",
        x.display,
        red_pixels(&x.screenshot()),
        stderr(&out),
        std::fs::read_to_string(&x.log).unwrap_or_default(),
        m.log_text()
    );

    // The display is the gui image's only.
    let env = |cmd: &str| stdout(&user.cmd(m.shim(cmd)).env("DISPLAY", &x.display).env("PULSE_SERVER", "unix:/x").output().unwrap());
    let (gui, plain) = (env("genv"), env("penv"));
    assert!(gui.lines().any(|l| l == format!("DISPLAY={}", x.display)) && gui.contains("PULSE_SERVER=unix:/x"), "{gui}");
    assert!(!plain.lines().any(|l| l.starts_with("DISPLAY=") || l.starts_with("PULSE_SERVER=")), "{plain}");
    let o = user.cmd(m.shim("pdisplay")).args(["-size", "80x80", "xc:red"]).env("DISPLAY", &x.display).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("unable to open X server"), "{}", stderr(&o));
    assert_eq!(red_pixels(&x.screenshot()), 0, "the window went with its tool; none came from the plain image");
    // odfs show says which tools get the display.
    let show = |cmd: &str| stdout(&m.odfs(&["show", cmd]));
    assert!(show("display").contains("; the caller's display and sound (a graphical image)"), "{}", show("display"));
    assert!(show("pdisplay").contains("; no display (DISPLAY, WAYLAND_DISPLAY"), "{}", show("pdisplay"));
}

/// A device node of the test's own (the kernel's tun device under another
/// name), owned by root and a group of its own, mode 0660; removed on drop.
struct Node {
    path: String,
    group: String,
}

impl Node {
    fn new() -> Node {
        let (path, group) = (format!("/dev/odfs-test-tun-{}", std::process::id()), format!("odfs-dev{}", std::process::id() % 100_000));
        let _ = std::fs::remove_file(&path);
        assert!(Command::new("groupadd").arg(&group).status().unwrap().success());
        assert!(Command::new("mknod").args(["-m", "0660", &path, "c", "10", "200"]).status().unwrap().success());
        assert!(Command::new("chgrp").args([&group, &path]).status().unwrap().success());
        Node { path, group }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = Command::new("groupdel").arg(&self.group).status();
    }
}

#[test]
fn a_device_passes_with_access_by_the_caller_s_groups_and_what_cannot_pass_is_one_line() {
    let node = Node::new();
    let missing = format!("/dev/odfs-test-absent-{}", std::process::id());
    let catalog = format!(
        "[image.dev]\nref = \"odfs-test/busybox:latest\"\nnetwork = \"none\"\ndevices = [\"{}\"]\n\n[command.dcat]\nimage = \"dev\"\npath = \"/bin/cat\"\n\n\
         [image.nodev]\nref = \"odfs-test/busybox:latest\"\nnetwork = \"none\"\ndevices = [\"{missing}\"]\n\n[command.ncat]\nimage = \"nodev\"\npath = \"/bin/cat\"\n\n\
         [image.gpu]\nref = \"odfs-test/busybox:latest\"\nnetwork = \"none\"\ngpus = \"all\"\n\n[command.gtrue]\nimage = \"gpu\"\npath = \"/bin/true\"\n",
        node.path
    );
    let m = TestMount::new(&catalog);
    let (member, other) = (TestUser::new(), TestUser::new());
    assert!(Command::new("usermod").args(["-aG", &node.group, &member.name]).status().unwrap().success());
    // The tun device opens for a member of its group (and then refuses a
    // read with no interface set up), as natively; not for anyone else.
    let native = |u: &TestUser| stderr(&u.cmd("cat").arg(&node.path).output().unwrap());
    let through = |u: &TestUser| stderr(&u.cmd(m.shim("dcat")).arg(&node.path).output().unwrap());
    assert!(native(&member).contains("File descriptor in bad state"), "{}", native(&member));
    assert!(through(&member).contains("File descriptor in bad state"), "{}", through(&member));
    assert!(native(&other).contains("Permission denied"), "{}", native(&other));
    assert!(through(&other).contains("Permission denied"), "{}", through(&other));

    let show = stdout(&m.odfs(&["show", "dcat"]));
    assert!(show.contains(&format!("devices:    {} (access by the caller's groups, as natively)", node.path)), "{show}");
    assert!(stdout(&m.odfs(&["show", "gtrue"])).contains("devices:    GPUs (gpus = \"all\")"));
    let o = m.sh(&format!(r#""$M/ncat" {missing}"#));
    assert_eq!(shell_status(&o), 126, "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with(&format!("odfs: ncat: image nodev passes the device {missing}, which this machine does not have"))
            && stderr(&o).contains("remove it from the image's `devices`"),
        "{}",
        stderr(&o)
    );
    let o = m.sh(r#""$M/gtrue""#);
    assert_eq!(shell_status(&o), 126, "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).starts_with("odfs: gtrue: image gpu asks for GPUs (gpus = \"all\") and the container engine has no GPU runtime")
            && stderr(&o).contains("install NVIDIA's container toolkit"),
        "{}",
        stderr(&o)
    );
}
