// The OS volume's boot path (packaging/initramfs-tools): a Debian 12 guest whose root partition was
// encrypted offline on the host with its detached header on /boot boots from it. Its own
// update-initramfs put diskseal in with the hook; at boot the script reads the header from /boot,
// takes the passphrase from the "BEK VOLUME" disk, activates root on dm-crypt before root is
// mounted, and does so again after a reboot. Without any key source the console says so and asks.
#include <gtest/gtest.h>

#include <cstdio>

#include "debian_guest.h"
#include "testlib.h"

namespace ds::test {
namespace {

// Host side, on the image copy: installs diskseal, the hook, the boot script and its config into
// the image, rebuilds the image's initramfs in a chroot, writes a payload, then encrypts the root
// partition in place (detached header at /boot/luks/osluksheader in the image's /boot).
const char kPrepare[] = R"SH(
set -euo pipefail
loops=() mounts=()
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" || true; done
  for i in "${loops[@]}"; do losetup -d "$i" 2>/dev/null || true; done
}
trap cleanup EXIT
rl=$(losetup -f --show -o "$ROOT_OFFSET" --sizelimit "$ROOT_SIZE" "$IMG"); loops+=("$rl")
bl=$(losetup -f --show -o "$BOOT_OFFSET" --sizelimit "$BOOT_SIZE" "$IMG"); loops+=("$bl")
m="$WORK/mnt"
mkdir -p "$m"
mount "$rl" "$m"; mounts+=("$m")
mount "$bl" "$m/boot"; mounts+=("$m/boot")
# Stripped, as a package ships it (the build's binary carries debug info). The image has the
# libraries a normal build links; others (a sanitizer build's runtime) come from the host.
strip -o "$m/usr/sbin/diskseal" "$DISKSEAL"
chmod 0755 "$m/usr/sbin/diskseal"
for lib in $(ldd "$DISKSEAL" | grep -o '/[^ ]*'); do
  [ -e "$m$lib" ] || install -D -m 0644 "$lib" "$m$lib"
done
p="$SRC/packaging/initramfs-tools"
install -D -m 0755 "$p/hooks/diskseal" "$m/usr/share/initramfs-tools/hooks/diskseal"
install -D -m 0755 "$p/scripts/local-top/diskseal" "$m/usr/share/initramfs-tools/scripts/local-top/diskseal"
install -D -m 0644 "$p/conf.d/diskseal" "$m/etc/initramfs-tools/conf.d/diskseal"
mkdir -p "$m/etc/diskseal"
cat >"$m/etc/diskseal/initramfs.conf" <<EOF
DS_NAME=osroot
DS_ROOT_DEV=PARTUUID=$ROOT_PARTUUID
DS_BOOT_DEV=UUID=$BOOT_UUID
DS_HEADER=/luks/osluksheader
DS_KEY_WAIT=10
EOF
head -c 3145728 /dev/urandom >"$m/root/payload"
(cd "$m/root" && sha256sum payload) >"$m/root/payload.sum"
cp "$m/root/payload.sum" "$WORK/payload.sum"
mount -t proc proc "$m/proc"; mounts+=("$m/proc")
mount -t sysfs sysfs "$m/sys"; mounts+=("$m/sys")
mount --bind /dev "$m/dev"; mounts+=("$m/dev")
chroot "$m" update-initramfs -u -k all >"$WORK/update-initramfs.log" 2>&1 ||
  { cat "$WORK/update-initramfs.log"; exit 1; }
umount "$m/dev" "$m/sys" "$m/proc"
mkdir -p "$m/boot/luks"
umount "$m/boot"
umount "$m"
mounts=()
# diskseal refuses a loop device whose backing file also backs a mounted one (the /boot partition
# of the same image): the header is made beside, then copied into /boot.
"$DISKSEAL" encrypt "$rl" --header "$WORK/osluksheader" --key-file "$WORK/pw" \
  --pbkdf pbkdf2 --pbkdf-force-iterations 1000
mkdir -p "$WORK/boot"
mount "$bl" "$WORK/boot"; mounts+=("$WORK/boot")
cp "$WORK/osluksheader" "$WORK/boot/luks/osluksheader"
umount "$WORK/boot"
mounts=()
# The BEK volume, as Azure attaches it: vfat, labelled "BEK VOLUME", the passphrase in a file.
truncate -s 8M "$WORK/bek.img"
mkfs.vfat -n "BEK VOLUME" "$WORK/bek.img" >/dev/null
mcopy -i "$WORK/bek.img" "$WORK/pw" ::LinuxPassPhraseFileName
)SH";

// In the guest: root is the dm-crypt mapping, the payload is intact, and the initramfs carries
// diskseal but no copy of the header.
const char kCheck[] = R"SH(
set -e
findmnt -no SOURCE /
dmsetup table osroot | cut -d' ' -f1-3
dmsetup table osroot | grep -q ' crypt '
(cd /root && sha256sum -c payload.sum)
lsinitramfs "/boot/initrd.img-$(uname -r)" > /tmp/initrd.list
grep -q 'sbin/diskseal$' /tmp/initrd.list
if grep -q osluksheader /tmp/initrd.list; then echo "FAIL: the header was frozen into the initramfs"; exit 1; fi
test -f /boot/luks/osluksheader
echo CHECK-OK
)SH";

TEST(VmOsBoot, EncryptedRootOpensFromTheBekVolumeAtEveryBootWithTheHeaderOnBoot) {
  DebianImage img;
  std::string err;
  ASSERT_TRUE(PrepareDebianImage({}, &img, &err)) << err;
  TempDir dir;
  ASSERT_TRUE(CopyImage(img, dir / "disk.img", &err)) << err;
  WriteFile(dir / "pw", "os-volume-passphrase");

  std::string env;
  for (const char* k : {"ROOT_OFFSET", "ROOT_SIZE", "BOOT_OFFSET", "BOOT_SIZE", "ROOT_PARTUUID", "BOOT_UUID"})
    env += std::string(k) + "=" + img.env[k] + " ";
  RunResult prep = RunProgram({"bash", "-c",
                        "env " + env + "IMG=" + dir / "disk.img" + " WORK=" + dir.path() +
                            " DISKSEAL=" + DISKSEAL_BIN + " SRC=" + DISKSEAL_SOURCE_DIR +
                            " bash -c \"$0\"",
                        kPrepare});
  ASSERT_EQ(prep.exit_code, 0) << prep.out << prep.err;

  DebianGuest::Options o;
  o.disk = dir / "disk.img";
  o.extra_disks = {dir / "bek.img"};
  o.root_arg = "/dev/mapper/osroot";
  o.work_dir = dir.path();
  {
    DebianGuest g(o);
    ASSERT_TRUE(g.Boot(300, &err)) << err;
    std::printf("[ boot  ] encrypted root: agent ready %.1f s after QEMU started\n", g.last_boot_seconds());
    EXPECT_NE(g.Console().find("diskseal: opened /dev/vda2 as /dev/mapper/osroot (key from the BEK volume"),
              std::string::npos)
        << g.ConsoleTail();
    ExecResult c = g.Exec(kCheck);
    EXPECT_EQ(c.exit_code, 0) << c.output;
    EXPECT_NE(c.output.find("/dev/mapper/osroot\n"), std::string::npos) << c.output;
    EXPECT_NE(c.output.find("CHECK-OK"), std::string::npos) << c.output;
    // Written while running on the mapping; must be there after the reboot.
    ASSERT_EQ(g.Exec("echo after > /root/written-encrypted && sync").exit_code, 0);

    ASSERT_TRUE(g.Reboot(300, &err)) << err;
    c = g.Exec(kCheck + std::string("cat /root/written-encrypted\n"));
    EXPECT_EQ(c.exit_code, 0) << c.output;
    EXPECT_NE(c.output.find("CHECK-OK\nafter\n"), std::string::npos) << c.output;
    ASSERT_TRUE(g.Shutdown(120, &err)) << err;
  }

  // No key source at all (no BEK volume, no vault configured): the console names what was tried
  // and asks for the passphrase; nothing is changed on the disk meanwhile.
  o.extra_disks.clear();
  DebianGuest g(o);
  ASSERT_TRUE(g.PowerOn(&err)) << err;
  EXPECT_TRUE(g.WaitConsole("diskseal: enter the passphrase of /dev/vda2", 240)) << g.ConsoleTail();
  EXPECT_NE(g.Console().find("diskseal: no key source opened /dev/vda2; no disk labelled 'BEK VOLUME'"),
            std::string::npos)
      << g.ConsoleTail();
  g.PowerCut();
}

}  // namespace
}  // namespace ds::test
