#!/usr/bin/python3
"""Run one command inside a stock Debian kernel booted under qemu (software CPU), as root.

    scripts/vm/run_in_vm.py KVER [--timeout SECONDS] [--share-rw HOSTDIR] [options] -- COMMAND...
    scripts/vm/run_in_vm.py --list

KVER is an installed kernel from /boot (scripts/install-kernels.sh), exact ("6.12.117+deb12-cloud-amd64")
or a prefix ("6.1", "6.12": the newest installed match).

The guest sees the host's root filesystem read-only (virtiofs; the host side is a read-only bind
of the root mount in a private mount namespace, the guest also mounts it ro) under a tmpfs
overlay, so it runs the host's own Python, BCC and checkout, and nothing it writes reaches the host
except through --share-rw directories (mounted at the same path in the guest). The command runs
in the same working directory as on the host, with a clean environment (PATH, HOME, LANG,
NETLAT_VM=1, NETLAT_VM_KERNEL=<version>, NETLAT_VM_NICS=<mac>,<mac>, plus --env/--pass-env),
stdin from /dev/null.
Unless --keep-headers is given, kernel headers are hidden in the guest (/usr/src is an empty tmpfs,
/lib/modules/*/build and source are removed in the overlay): the agent must work headerless.

Exit status: the guest command's own; 124 on timeout; 125 when the VM failed (no exit marker:
boot failure, kernel panic, the harness could not start qemu or virtiofsd); 2 on usage errors.

The guest has two virtio-net NICs (MACs NIC_PAIR_MACS) joined only to each other, by a hub
inside qemu with no other port: a real driver's path (NAPI, GRO, interrupts, TX completion)
for the tests (tests/support/nics.py), which never reaches the host's network.

Guest output goes to stdout (or --log FILE, with the last lines printed on failure); the
harness's own lines ("[vm] ...", timings) go to stderr. Python 3 stdlib only.
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE_ROOT = REPO / "build" / "vm"
BUSYBOX = "/bin/busybox"
#: The two guest NICs, joined to each other only (qemu hub 0, which has no other port).
NIC_PAIR_MACS = ("52:54:00:6e:6c:01", "52:54:00:6e:6c:02")
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
QEMU = "qemu-system-x86_64"
# Modules the initramfs needs to reach the shared root; dependencies come from modprobe.
INITRD_MODULES = ["virtio_pci", "virtiofs", "overlay"]
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ROOT_TAG = "netlatroot"
MARK_EXIT = "NETLAT-VM-EXIT="
MARK_READY = "NETLAT-VM-READY"
MARK_ERROR = "NETLAT-VM-ERROR="
# Terminal control sequences the firmware prints (reset, clear screen, colours).
ANSI = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|[c()][0-9A-B]?)")
EXIT_TIMEOUT = 124
EXIT_VMFAIL = 125
# Bump when the initramfs layout or /init changes: part of the cache key.
INITRD_FORMAT = "1"


def log(msg: str) -> None:
    print(f"[vm] {msg}", file=sys.stderr, flush=True)


class HarnessError(Exception):
    pass


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def clean_stale_rundirs() -> None:
    """Remove run directories left by runners that were killed (SIGKILL skips `finally`)."""
    for d in Path(tempfile.gettempdir()).glob("netlat-vm-*"):
        try:
            pid = int((d / "owner.pid").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError):
            pass


# --------------------------------------------------------------------------- kernels


def installed_kernels() -> list[str]:
    """Kernel versions with an image in /boot and a modules tree, oldest first."""
    out = []
    for img in Path("/boot").glob("vmlinuz-*"):
        ver = img.name[len("vmlinuz-") :]
        if (Path("/lib/modules") / ver / "kernel").is_dir():
            out.append(ver)

    def key(v: str):
        return [int(p) if p.isdigit() else p for p in re.split(r"[.\-+]", v)]

    return sorted(out, key=key)


def resolve_kernel(spec: str) -> str:
    kernels = installed_kernels()
    if spec in kernels:
        return spec
    matches = [k for k in kernels if k.startswith(spec) and k[len(spec) : len(spec) + 1] in (".", "-", "+")]
    if not matches:
        raise HarnessError(
            f"no installed kernel matches {spec!r} (installed: {', '.join(kernels) or 'none'}; "
            "run scripts/install-kernels.sh)"
        )
    return matches[-1]


# Compressed payloads of a bzImage: (magic, decompressor command).
PAYLOADS = [
    (b"\x28\xb5\x2f\xfd", ["zstd", "-dcq"]),
    (b"\x02\x21\x4c\x18", ["lz4", "-dcq"]),
    (b"\xfd7zXZ\x00", ["xz", "-dcq"]),
    (b"\x1f\x8b\x08", ["gzip", "-dcq"]),
]


def elf_ok_with_pvh(data: bytes) -> bool:
    """A complete x86-64 ELF with a PVH entry note (Xen note type 18: XEN_ELFNOTE_PHYS32_ENTRY)."""
    import struct

    if len(data) < 64 or data[:5] != b"\x7fELF\x02":
        return False
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
    if shoff + shentsize * shnum > len(data) or phoff + phentsize * phnum > len(data):
        return False
    for i in range(phnum):
        ptype, _flags, off, _va, _pa, filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if ptype != 4:  # PT_NOTE
            continue
        pos, end = off, off + filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
            name = data[pos + 12 : pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == 18:
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def kernel_image(kver: str, rebuild: bool = False) -> str:
    """The kernel to boot: the bzImage's vmlinux, decompressed once and cached, booted through
    its PVH entry (skips the firmware's real-mode setup and the decompression under TCG, ~1 s);
    the bzImage itself when that is not possible."""
    bz = Path(f"/boot/vmlinuz-{kver}")
    cache = CACHE_ROOT / kver
    out = cache / "vmlinux"
    stamp = cache / "vmlinux.key"
    st = bz.stat()
    key = f"{st.st_size}:{st.st_mtime_ns}"
    if not rebuild and out.is_file() and stamp.is_file() and stamp.read_text().strip() == key:
        return str(out)
    if stamp.is_file() and stamp.read_text().strip() == "no-pvh:" + key and not rebuild:
        return str(bz)
    cache.mkdir(parents=True, exist_ok=True)
    data = bz.read_bytes()
    for magic, cmd in PAYLOADS:
        start = data.find(magic)
        while start >= 0:
            if shutil.which(cmd[0]):
                # Trailing bytes after the payload make the tool complain; the output is complete.
                res = subprocess.run(cmd, input=data[start:], capture_output=True)
                if elf_ok_with_pvh(res.stdout):
                    tmp = out.with_suffix(f".tmp{os.getpid()}")
                    tmp.write_bytes(res.stdout)
                    os.replace(tmp, out)
                    stamp.write_text(key + "\n")
                    log(f"extracted {out} ({len(res.stdout) >> 20} MiB, PVH boot) with {cmd[0]}")
                    return str(out)
            start = data.find(magic, start + 1)
    log(f"no PVH-capable vmlinux in {bz}: booting the bzImage")
    stamp.write_text("no-pvh:" + key + "\n")
    return str(bz)


# --------------------------------------------------------------------------- initramfs


class Cpio:
    """Minimal writer for the 'newc' cpio format the kernel unpacks as an initramfs."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nameb = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nameb), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        buf = hdr + nameb
        buf += b"\0" * (-len(buf) % 4)
        buf += data
        buf += b"\0" * (-len(buf) % 4)
        self.parts.append(buf)

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, 0o040000 | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, 0o020000 | perm, rdev=(major, minor))

    def bytes(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self.parts)


INIT_SCRIPT = r"""#!/bin/busybox sh
# otel-netlat VM stage 1 (initramfs): reach the host's root over virtiofs, overlay a tmpfs on it,
# switch_root into it and run /.netlat-vm/stage2.sh (made per run by scripts/vm/run_in_vm.py).
B=/bin/busybox
fail() {
    echo "NETLAT-VM-ERROR=$*"
    $B sync
    $B poweroff -f
    $B sleep 10
    exit 1   # PID 1 exiting panics the kernel; panic=-1 and -no-reboot end qemu
}
$B mkdir -p /proc /sys /lower /upper /newroot
$B mount -t proc proc /proc
while read -r m; do
    [ -n "$m" ] || continue
    $B insmod "/modules/$m" || fail "insmod $m"
done < /modules/order
$B mount -t virtiofs -o ro @ROOT_TAG@ /lower || fail "mount virtiofs root (tag @ROOT_TAG@)"
$B mount -t tmpfs -o mode=0755 overlay-upper /upper || fail "mount tmpfs upper"
$B mkdir -p /upper/u /upper/w
$B mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot \
    || fail "mount overlay"
$B mkdir -p /newroot/.netlat-vm
$B cp /netlat/stage2.sh /newroot/.netlat-vm/stage2.sh || fail "copy stage2"
[ -x /newroot/bin/busybox ] || fail "the shared root has no /bin/busybox (install busybox-static)"
$B umount /proc
exec $B switch_root /newroot /bin/busybox sh /.netlat-vm/stage2.sh
fail "switch_root"
""".replace("@ROOT_TAG@", ROOT_TAG)


def module_files(kver: str) -> list[Path]:
    """Module files to insmod, in order, for INITRD_MODULES (built-in ones are skipped)."""
    out: list[Path] = []
    for mod in INITRD_MODULES:
        res = subprocess.run(["modprobe", "--show-depends", "-S", kver, mod], capture_output=True, text=True)
        if res.returncode != 0:
            raise HarnessError(f"modprobe --show-depends -S {kver} {mod}: {res.stderr.strip()}")
        for line in res.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "insmod":
                p = Path(parts[1])
                if p not in out:
                    out.append(p)
            elif parts[:1] != ["builtin"]:
                raise HarnessError(f"unexpected modprobe output: {line!r}")
    return out


def read_module(path: Path) -> bytes:
    """Module bytes, decompressed (busybox insmod reads only plain .ko)."""
    name = path.name
    if name.endswith(".ko"):
        return path.read_bytes()
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    if name.endswith(".ko.gz"):
        import gzip

        return gzip.decompress(path.read_bytes())
    raise HarnessError(f"unknown module compression: {path}")


def base_initramfs(kver: str, rebuild: bool = False) -> Path:
    """The cached per-kernel initramfs (busybox, /init, modules). Rebuilt when its inputs change."""
    mods = module_files(kver)
    key = hashlib.sha256()
    key.update(INITRD_FORMAT.encode() + INIT_SCRIPT.encode())
    for p in [Path(BUSYBOX), *mods]:
        st = p.stat()
        key.update(f"{p}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    digest = key.hexdigest()[:16]
    cache = CACHE_ROOT / kver
    out = cache / "initramfs-base.cpio"
    stamp = cache / "initramfs-base.key"
    if not rebuild and out.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return out
    t0 = time.monotonic()
    cache.mkdir(parents=True, exist_ok=True)
    c = Cpio()
    for d in ["bin", "dev", "proc", "sys", "lower", "upper", "newroot", "modules", "netlat"]:
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    c.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
    c.file("init", INIT_SCRIPT.encode(), 0o755)
    order = []
    for p in mods:
        fname = p.name.split(".ko")[0] + ".ko"
        c.file(f"modules/{fname}", read_module(p))
        order.append(fname)
    c.file("modules/order", ("\n".join(order) + "\n").encode())
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(c.bytes())
    os.replace(tmp, out)
    stamp.write_text(digest + "\n")
    log(
        f"built {out} ({out.stat().st_size // 1024} KiB, modules: {' '.join(order) or 'none'}) "
        f"in {time.monotonic() - t0:.1f}s"
    )
    return out


# Stage 2's fixed start: PID 1 mounts what a Debian system has, then the console takes its output.
STAGE2_MOUNTS = [
    "#!/bin/busybox sh",
    "# otel-netlat VM stage 2: runs as PID 1 in the overlay root.",
    "B=/bin/busybox",
    'fail() { echo "NETLAT-VM-ERROR=$*"; $B sync; $B poweroff -f; $B sleep 10; exit 1; }',
    "$B mount -t proc proc /proc || fail 'mount proc'",
    "$B mount -t sysfs sysfs /sys || fail 'mount sysfs'",
    "$B mount -t devtmpfs devtmpfs /dev || fail 'mount devtmpfs'",
    "exec </dev/null >/dev/console 2>&1",
    "$B mkdir -p /dev/pts /dev/shm",
    "$B mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts",
    "$B mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm",
    "$B mount -t debugfs debugfs /sys/kernel/debug",
    "$B mount -t tracefs tracefs /sys/kernel/tracing || fail 'mount tracefs'",
    "$B mount -t bpf bpf /sys/fs/bpf || fail 'mount bpffs'",
    "$B mount -t cgroup2 cgroup2 /sys/fs/cgroup",
    "$B mount -t tmpfs -o mode=0755,nosuid,nodev run /run || fail 'mount /run'",
]


def stage2_script(
    kver: str,
    argv: list[str],
    cwd: str,
    env: dict[str, str],
    rw_shares: list[tuple[str, str]],
    keep_headers: bool,
) -> str:
    """The guest's PID 1: mount, run ``argv`` in ``cwd`` with exactly ``env``, print its exit
    status as a marker the host reads, power off."""
    return "\n".join(
        [
            *STAGE2_MOUNTS,
            *stage2_run_mounts(cwd, rw_shares, keep_headers),
            *stage2_command(argv, cwd, env, rw_shares),
        ]
    )


def stage2_run_mounts(cwd: str, rw_shares: list[tuple[str, str]], keep_headers: bool) -> list[str]:
    """The mounts that depend on the run: /tmp, hidden headers, writable shares."""
    q = shlex.quote
    lines = []
    # A checkout under /tmp (a CI clone) must stay visible: then /tmp is the overlay's, which is
    # writable in memory anyway; otherwise the guest gets a /tmp of its own.
    if not (cwd == "/tmp" or cwd.startswith("/tmp/")):
        lines.append("$B mount -t tmpfs -o mode=1777,nosuid,nodev tmp /tmp || fail 'mount /tmp'")
    if not keep_headers:
        lines += [
            "# Hide kernel headers: the agent must compile without them.",
            "$B mount -t tmpfs -o mode=0755 no-headers /usr/src || fail 'hide /usr/src'",
            'for d in /lib/modules/* /usr/lib/modules/*; do $B rm -f "$d/build" "$d/source"; done',
        ]
    for tag, path in rw_shares:
        lines += [
            f"$B mkdir -p {q(path)}",
            f"$B mount -t virtiofs {tag} {q(path)} || fail {q('mount rw share ' + path)}",
        ]
    return lines


def stage2_command(
    argv: list[str], cwd: str, env: dict[str, str], rw_shares: list[tuple[str, str]]
) -> list[str]:
    """Run the command between the ready and exit markers, flush the shares, power off."""
    q = shlex.quote
    envs = " ".join(q(f"{k}={v}") for k, v in env.items())
    lines = [
        "$B ip link set lo up || fail 'lo up'",
        "$B hostname netlat-vm",
        f"cd {q(cwd)} || fail {q('cd ' + cwd)}",
        f"set -- {' '.join(q(a) for a in argv)}",
        f"echo \"{MARK_READY} kernel=$($B uname -r) uptime=$($B cut -d' ' -f1 /proc/uptime)\"",
        f'$B env -i {envs} "$@"',
        "rc=$?",
        f'echo "{MARK_EXIT}$rc"',
        "$B sync",
    ]
    lines += [f"$B umount {q(path)}" for _tag, path in rw_shares]
    return [*lines, "$B poweroff -f", "$B sleep 10", "echo o > /proc/sysrq-trigger", "exit $rc", ""]


def run_initramfs(base: Path, stage2: str, dest: Path) -> None:
    """Base archive + a second archive with this run's stage 2 (the kernel unpacks both)."""
    c = Cpio()
    c.file("netlat/stage2.sh", stage2.encode(), 0o755)
    with open(dest, "wb") as f:
        with open(base, "rb") as b:
            shutil.copyfileobj(b, f)
        f.write(c.bytes())


# --------------------------------------------------------------------------- processes


def wait_for_socket(path: Path, proc: subprocess.Popen, what: str, limit: float = 10.0) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if path.exists():
            return
        if proc.poll() is not None:
            errfile = path.with_suffix(".log")
            err = errfile.read_text(errors="replace") if errfile.exists() else ""
            raise HarnessError(f"{what} exited with {proc.returncode}: {err.strip()[-2000:]}")
        time.sleep(0.02)
    raise HarnessError(f"{what}: socket {path} did not appear within {limit:.0f}s")


def die_with_parent() -> None:
    """preexec_fn: get SIGTERM when this runner dies, even by SIGKILL (prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort; `timeout` still bounds qemu
        pass


PSEUDO_FS = {
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "tracefs",
    "debugfs",
    "securityfs",
    "bpf",
    "mqueue",
    "hugetlbfs",
    "pstore",
    "configfs",
    "fusectl",
    "autofs",
    "binfmt_misc",
    "nsfs",
    "efivarfs",
    "rpc_pipefs",
}


def mount_chain(paths: list[str]) -> list[str]:
    """Mount points other than / on the way to each of `paths`, except kernel pseudo-filesystems
    (proc, sysfs...): a checkout on its own disk must be visible in the guest too."""
    mounts: list[tuple[str, str]] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), left.split()[4])
            mounts.append((mp, right.split()[0]))
    out: set[str] = set()
    for path in paths:
        for mp, fstype in mounts:
            if mp != "/" and fstype not in PSEUDO_FS and (path == mp or path.startswith(mp + "/")):
                out.add(mp)
    return sorted(out, key=lambda m: (m.count("/"), m))


def start_virtiofsd(
    sock: Path, source: str, readonly_root: Path | None, cache: str, extra: list[str] | None = None
) -> subprocess.Popen:
    base = [
        VIRTIOFSD,
        f"--socket-path={sock}",
        "-o",
        f"cache={cache}",
        "-o",
        "sandbox=chroot",
        "--rlimit-nofile=65536",
    ]
    if readonly_root is None:
        cmd = base + ["-o", f"source={source}"]
    else:
        # Serve a read-only bind of the host's root mount, made in a private mount namespace:
        # the host kernel itself refuses writes, whatever the guest does. Not recursive: the
        # host's /proc, /sys, /dev are not exported (the guest mounts its own); `extra` mount
        # points (e.g. the checkout's own disk) are bound read-only at their place.
        readonly_root.mkdir()
        script = (
            'set -e; r=$1; shift; mount --bind / "$r"; mount -o remount,bind,ro "$r"; '
            'while [ "$1" != -- ]; do mount --bind "$1" "$r$1"; mount -o remount,bind,ro "$r$1"; '
            'shift; done; shift; exec "$@"'
        )
        cmd = [
            "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
            str(readonly_root), *(extra or []), "--", *base, "-o", f"source={readonly_root}",
        ]  # fmt: skip
    # stderr to a file, not a pipe: nobody drains a pipe while the VM runs, a full one would block.
    with open(sock.with_suffix(".log"), "wb") as errf:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errf,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )


def stop(proc: subprocess.Popen | None, name: str) -> None:
    """Terminate a process we started (and its process group, which it leads)."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
    log(f"warning: {name} (pid {proc.pid}) did not exit")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Our options before ``--``, the guest's command after it."""
    if "--" in argv:
        i = argv.index("--")
        ours, command = argv[:i], argv[i + 1 :]
    else:
        ours, command = argv, []
    p = argparse.ArgumentParser(
        prog="run_in_vm.py",
        usage="%(prog)s KVER [--timeout SECONDS] [--share-rw HOSTDIR]... [options] -- COMMAND...",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("kver", nargs="?", help="kernel version from /boot, exact or a prefix (6.1, 6.12)")
    p.add_argument("--list", action="store_true", help="list installed kernels and exit")
    p.add_argument("--timeout", type=float, default=600, help="wall-clock limit for the VM (default 600)")
    add_guest_options(p)
    add_vm_options(p)
    args = p.parse_args(ours)
    args.command = command
    if not args.list:
        if not args.kver:
            p.error("KVER is required")
        if not command:
            p.error("no command given (put it after --)")
    return args


def add_guest_options(p: argparse.ArgumentParser) -> None:
    """What the guest command sees: shared directories, headers, environment, directory."""
    p.add_argument(
        "--share-rw",
        action="append",
        default=[],
        metavar="HOSTDIR",
        help="share HOSTDIR writable, at the same path in the guest (repeatable)",
    )
    p.add_argument(
        "--keep-headers",
        action="store_true",
        help="do not hide kernel headers (/usr/src, /lib/modules/*/build) in the guest",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a variable for the command (repeatable)",
    )
    p.add_argument(
        "--pass-env",
        action="append",
        default=[],
        metavar="NAME",
        help="pass the host's value of NAME, if set (repeatable)",
    )
    p.add_argument("--cwd", default=None, help="working directory in the guest (default: the current one)")


def add_vm_options(p: argparse.ArgumentParser) -> None:
    """How the VM runs and reports: console, kernel command line, size, caches, boot path."""
    p.add_argument(
        "--log",
        default=None,
        metavar="FILE",
        help="write the console to FILE instead of stdout; its tail is printed on failure",
    )
    p.add_argument("--kernel-log", action="store_true", help="show kernel boot messages (no 'quiet')")
    p.add_argument("--append", default="", help="extra kernel command line")
    p.add_argument("--memory", default="2G", help="guest memory (default 2G)")
    p.add_argument("--smp", type=int, default=2, help="guest CPUs (default 2)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the cached initramfs")
    p.add_argument(
        "--no-pvh",
        action="store_true",
        help="boot /boot/vmlinuz through the firmware instead of the cached vmlinux's PVH entry",
    )
    p.add_argument(
        "--no-ro-bind",
        action="store_true",
        help="export / directly (guest-side ro mount only), if unshare/mount are unavailable",
    )


@dataclass(frozen=True)
class Plan:
    """A checked run: the kernel, and what the guest command gets."""

    kver: str
    cwd: str
    env: dict[str, str]
    rw_shares: list[tuple[str, str]]  # (virtiofs tag, host directory)


def check_host(args: argparse.Namespace) -> Plan:
    """Everything that can be refused before a VM starts; HarnessError says what (exit 2)."""
    if os.geteuid() != 0:
        raise HarnessError("must run as root (virtiofsd needs it)")
    kver = resolve_kernel(args.kver)
    for tool in (VIRTIOFSD, BUSYBOX):
        if not os.access(tool, os.X_OK):
            raise HarnessError(f"{tool} missing: run scripts/install-kernels.sh")
    if not shutil.which(QEMU):
        raise HarnessError(f"{QEMU} missing: run scripts/install-kernels.sh")
    cwd = os.path.abspath(args.cwd or os.getcwd())
    for private in ("/run", "/proc", "/sys", "/dev"):
        if cwd == private or cwd.startswith(private + "/"):
            raise HarnessError(
                f"working directory {cwd}: the guest has its own {private}, so it cannot run there "
                "(use --cwd, or --share-rw a directory)"
            )
    rw_shares = []
    for i, d in enumerate(args.share_rw):
        d = os.path.abspath(d)
        if not os.path.isdir(d):
            raise HarnessError(f"--share-rw {d}: not a directory")
        rw_shares.append((f"netlatrw{i}", d))
    return Plan(kver, cwd, guest_env(kver, args.pass_env, args.env), rw_shares)


def guest_env(kver: str, pass_env: list[str], assignments: list[str]) -> dict[str, str]:
    """The command's whole environment: a fixed base, then --pass-env, then --env."""
    env = {
        "PATH": GUEST_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NETLAT_VM": "1",
        "NETLAT_VM_KERNEL": kver,
        "NETLAT_VM_NICS": ",".join(NIC_PAIR_MACS),
    }
    for name in pass_env:
        if name in os.environ:
            env[name] = os.environ[name]
    for kv in assignments:
        if "=" not in kv:
            raise HarnessError(f"--env wants NAME=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        env[k] = v
    return env


@dataclass
class Started:
    """The processes a run started, for the cleanup: the virtiofsd instances, then qemu."""

    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    qemu: subprocess.Popen | None = None

    def stop_all(self) -> None:
        stop(self.qemu, "qemu")
        for name, proc in reversed(self.procs):
            stop(proc, name)


def start_shares(tmpdir: Path, plan: Plan, no_ro_bind: bool, started: Started) -> list[tuple[str, Path]]:
    """A virtiofsd for the root and one per writable share, each serving its socket: (tag, socket)."""
    socks = []
    sock = tmpdir / "root.sock"
    ro_root = None if no_ro_bind else tmpdir / "roroot"
    extra = mount_chain([plan.cwd, "/usr", "/etc", "/opt"])
    started.procs.append(("virtiofsd /", start_virtiofsd(sock, "/", ro_root, "always", extra)))
    socks.append((ROOT_TAG, sock))
    for tag, d in plan.rw_shares:
        s = tmpdir / f"{tag}.sock"
        started.procs.append((f"virtiofsd {d}", start_virtiofsd(s, d, None, "auto")))
        socks.append((tag, s))
    for (name, proc), (_tag, s) in zip(started.procs, socks, strict=True):
        wait_for_socket(s, proc, name)
    return socks


def qemu_command(
    args: argparse.Namespace, kimage: str, initrd: Path, socks: list[tuple[str, Path]]
) -> list[str]:
    """qemu under TCG, console on stdio, memory shareable with virtiofsd, one device per share."""
    cmdline = ["console=ttyS0", "panic=-1", "rdinit=/init"]
    if not args.kernel_log:
        cmdline += ["quiet", "loglevel=3"]
    cmdline += args.append.split()
    qcmd = [
        QEMU, "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", str(args.smp), "-m", args.memory,
        "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
        "-object", f"memory-backend-memfd,id=mem,size={args.memory},share=on", "-numa", "node,memdev=mem",
        "-kernel", kimage, "-initrd", str(initrd), "-append", " ".join(cmdline),
    ]  # fmt: skip
    for i, mac in enumerate(NIC_PAIR_MACS):
        qcmd += ["-netdev", f"hubport,id=nic{i},hubid=0"]
        qcmd += ["-device", f"virtio-net-pci,netdev=nic{i},mac={mac}"]
    for i, (tag, s) in enumerate(socks):
        qcmd += [
            "-chardev",
            f"socket,id=vfs{i},path={s}",
            "-device",
            f"vhost-user-fs-pci,chardev=vfs{i},tag={tag}",
        ]
    return qcmd


def boot(args: argparse.Namespace, plan: Plan, tmpdir: Path, started: Started, deadline: float) -> None:
    """Build this run's initramfs, start the shares, then qemu (``started.qemu``)."""
    base = base_initramfs(plan.kver, args.rebuild)
    kimage = str(Path(f"/boot/vmlinuz-{plan.kver}")) if args.no_pvh else kernel_image(plan.kver, args.rebuild)
    initrd = tmpdir / "initramfs.cpio"
    stage2 = stage2_script(plan.kver, args.command, plan.cwd, plan.env, plan.rw_shares, args.keep_headers)
    run_initramfs(base, stage2, initrd)
    socks = start_shares(tmpdir, plan, args.no_ro_bind, started)
    remaining = max(1, int(deadline - time.monotonic() + 0.999))
    # `timeout` bounds qemu even if this script is killed with SIGKILL.
    started.qemu = subprocess.Popen(
        ["timeout", "-k", "5", str(remaining)] + qemu_command(args, kimage, initrd, socks),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    log(f"booting {plan.kver} (timeout {args.timeout:.0f}s)")


class Console:
    """The guest's serial console: finds the harness's markers, shows the command's output,
    and keeps what it does not show for a failure report."""

    def __init__(self, t0: float, logf, show_all: bool) -> None:
        self.t0 = t0
        self.logf = logf
        self.show_all = show_all  # --kernel-log: boot and shutdown lines too
        self.tail: deque[str] = deque(maxlen=60)
        self.phase = "boot"  # boot -> command -> shutdown
        self.t_ready: float | None = None
        self.t_done: float | None = None
        self.exit_code: int | None = None
        self.guest_error: str | None = None
        self._buf = b""

    def feed(self, chunk: bytes) -> None:
        self._buf += chunk.replace(b"\r", b"")
        *lines, self._buf = self._buf.split(b"\n")
        for raw in lines:
            self.handle(raw.decode("utf-8", errors="replace"))

    def flush(self) -> None:
        """The last line, if the console ended without a newline."""
        if self._buf:
            self.handle(self._buf.decode("utf-8", errors="replace"))
            self._buf = b""

    def emit(self, line: str, always: bool) -> None:
        if self.logf:
            self.logf.write(line + "\n")
            self.logf.flush()
        elif always or self.show_all:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            return
        self.tail.append(line)  # not shown: kept for the failure report

    def handle(self, line: str) -> None:
        line = ANSI.sub("", line)
        if self.phase == "boot" and MARK_READY in line:
            pre, rest = line.split(MARK_READY, 1)
            if pre.strip():
                self.emit(pre, False)
            self.phase = "command"
            self.t_ready = time.monotonic()
            log(f"{MARK_READY}{rest} (boot {self.t_ready - self.t0:.1f}s)")
            return
        if self.phase == "command":
            m = re.search(re.escape(MARK_EXIT) + r"(\d+)\s*$", line)
            if m:
                self.exit_code = int(m.group(1))
                self.t_done = time.monotonic()
                self.phase = "shutdown"
                pre = line[: m.start()]
                if pre:
                    self.emit(pre, True)
                return
        if MARK_ERROR in line:
            self.guest_error = line.split(MARK_ERROR, 1)[1].strip()
            log(f"guest harness error: {self.guest_error}")
        self.emit(line, self.phase == "command")


def watch_console(qemu: subprocess.Popen, console: Console, deadline: float) -> bool:
    """Feed qemu's output to ``console`` until qemu ends; True when the deadline came first."""
    timed_out = False
    sel = selectors.DefaultSelector()
    sel.register(qemu.stdout, selectors.EVENT_READ)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        if not sel.select(timeout=min(left, 1.0)):
            if qemu.poll() is not None:
                break
            continue
        chunk = os.read(qemu.stdout.fileno(), 65536)
        if not chunk:
            break
        console.feed(chunk)
    console.flush()
    sel.close()
    if not timed_out:
        try:
            qemu.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = console.exit_code is None
    return timed_out or (qemu.returncode == 124 and console.exit_code is None)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.list:
        for k in installed_kernels():
            print(k)
        return 0
    try:
        plan = check_host(args)
    except HarnessError as e:
        log(str(e))
        return 2
    return run(args, plan)


def run(args: argparse.Namespace, plan: Plan) -> int:
    """Boot, watch the console, always clean up; the exit status says how it ended."""
    started = Started()
    clean_stale_rundirs()
    tmpdir = Path(tempfile.mkdtemp(prefix="netlat-vm-"))
    (tmpdir / "owner.pid").write_text(str(os.getpid()))
    # Closed in the `finally` below, with the processes.
    logf = open(args.log, "w", encoding="utf-8", errors="replace") if args.log else None  # noqa: SIM115
    console = Console(time.monotonic(), logf, args.kernel_log)
    deadline = console.t0 + args.timeout
    timed_out = False
    interrupted: Interrupted | None = None

    def on_signal(signum, _frame):
        raise Interrupted(signum)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    old_handlers = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        boot(args, plan, tmpdir, started, deadline)
        timed_out = watch_console(started.qemu, console, deadline)
    except HarnessError as e:
        log(f"error: {e}")
        console.guest_error = console.guest_error or str(e)
    except Interrupted as e:
        interrupted = e
    finally:
        # Further signals must not cut the cleanup short.
        for sig in old_handlers:
            signal.signal(sig, signal.SIG_IGN)
        started.stop_all()
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        if logf:
            logf.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
    return verdict(args, plan.kver, console, timed_out, interrupted, started.qemu is not None)


def verdict(
    args: argparse.Namespace,
    kver: str,
    console: Console,
    timed_out: bool,
    interrupted: Interrupted | None,
    qemu_started: bool,
) -> int:
    """Log how the run ended, with its timings, and return the exit status it stands for."""
    t_end = time.monotonic()
    timing = f"total {t_end - console.t0:.1f}s"
    if console.t_ready is not None:
        command_s = (console.t_done or t_end) - console.t_ready
        timing = f"boot {console.t_ready - console.t0:.1f}s, command {command_s:.1f}s, " + timing
    if interrupted is not None:
        log(f"{kver}: interrupted by {interrupted}, VM stopped ({timing})")
        return 128 + interrupted.signum
    if console.exit_code is not None:
        log(f"{kver}: exit {console.exit_code} ({timing})")
        if console.exit_code != 0 and args.log:
            print_tail(console.tail, args.log)
        return console.exit_code
    if timed_out:
        log(f"{kver}: TIMEOUT after {args.timeout:.0f}s, no exit marker ({timing})")
        print_tail(console.tail, args.log)
        return EXIT_TIMEOUT
    why = console.guest_error or ("boot failure or kernel panic?" if qemu_started else "qemu did not start")
    log(f"{kver}: the VM ended without an exit marker ({why}; {timing})")
    print_tail(console.tail, args.log)
    return EXIT_VMFAIL


def print_tail(tail: deque, logname: str | None) -> None:
    if not tail:
        return
    what = (
        f"last {len(tail)} console lines (full log: {logname})"
        if logname
        else f"last {len(tail)} console lines not shown above (boot, shutdown)"
    )
    print(f"[vm] --- {what} ---", file=sys.stderr)
    for line in tail:
        print(f"[vm] | {line}", file=sys.stderr)
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
