// The OS volume's boot path (packaging/initramfs-tools): a Debian 12 guest whose root partition was
// encrypted offline on the host with its detached header on /boot boots from it. Its own
// update-initramfs put diskseal in with the hook; at boot the script reads the header from /boot,
// takes the passphrase from the "BEK VOLUME" disk, activates root on dm-crypt before root is
// mounted, and does so again after a reboot; without the BEK volume it takes the key from the vault
// over QEMU's restricted network; with no key source the console says so and asks.
#include <gtest/gtest.h>

#include <cstdio>

#include "debian_guest.h"
#include "testlib.h"
#include "vault_testutil.h"

namespace ds::test {
namespace {

// Host side, on the image copy: installs diskseal, the hook, the boot script and its config into
// the image, rebuilds the image's initramfs in a chroot, writes a payload, then encrypts the root
// partition in place (detached header at /boot/luks/osluksheader in the image's /boot).
const char kPrepare[] = R"SH(
mount_image
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
DS_VAULT_URL=https://10.0.2.100:8000
DS_VAULT_TOKEN_FILE=/etc/diskseal/machine.token
DS_VAULT_CA=/etc/diskseal/vault-ca.pem
EOF
# The machine's vault token (secrets:get) and the vault's CA: the hook copies them in.
install -m 0600 "$MACHINE_TOKEN" "$m/etc/diskseal/machine.token"
install -m 0644 "$VAULT_CA" "$m/etc/diskseal/vault-ca.pem"
head -c 3145728 /dev/urandom >"$m/root/payload"
(cd "$m/root" && sha256sum payload) >"$m/root/payload.sum"
cp "$m/root/payload.sum" "$WORK/payload.sum"
chroot_mounts
chroot "$m" update-initramfs -u -k all >"$WORK/update-initramfs.log" 2>&1 ||
  { cat "$WORK/update-initramfs.log"; exit 1; }
umount "$m/dev" "$m/sys" "$m/proc"
mkdir -p "$m/boot/luks"
umount "$m/boot"
umount "$m"
mounts=()
# diskseal refuses a loop device whose backing file also backs a mounted one (the /boot partition
# of the same image): the header is made beside, then copied into /boot.
# The passphrase is escrowed in the vault as it is encrypted (secret diskseal-<LUKS UUID>).
"$DISKSEAL" encrypt "$rl" --header "$WORK/osluksheader" --key-file "$WORK/pw" \
  --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
  --vault "$VAULT_URL" --vault-token-file "$ADMIN_TOKEN" --vault-ca "$VAULT_CA"
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
  // The vault on the host's loopback; the guest reaches it as 10.0.2.100:8000 (guestfwd) only.
  VaultProcess vault(dir / "vault");
  vault.SetExtraArgs({"--hostname", "10.0.2.100"});
  vault.Start();
  const std::string admin = vault.Token("admin", "all");
  const std::string machine = vault.Token("machine", "secrets:get");

  RunResult prep = RunOnImage(img, dir / "disk.img",
                              {{"WORK", dir.path()}, {"DISKSEAL", DISKSEAL_BIN}, {"SRC", DISKSEAL_SOURCE_DIR},
                               {"VAULT_URL", vault.url()}, {"VAULT_CA", vault.ca()}, {"ADMIN_TOKEN", admin},
                               {"MACHINE_TOKEN", machine}},
                              kPrepare);
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

  // No BEK volume: the key comes from the vault over the guest's only network path.
  o.extra_disks.clear();
  o.vault_port = vault.port();
  {
    DebianGuest g(o);
    ASSERT_TRUE(g.Boot(300, &err)) << err;
    EXPECT_NE(g.Console().find("diskseal: opened /dev/vda2 as /dev/mapper/osroot (key from the vault "
                               "https://10.0.2.100:8000)"),
              std::string::npos)
        << g.ConsoleTail();
    ExecResult c = g.Exec(kCheck);
    EXPECT_EQ(c.exit_code, 0) << c.output;
    ASSERT_TRUE(g.Shutdown(120, &err)) << err;
  }

  // No key source answers (no BEK volume, the vault down): the console names what was tried and
  // asks for the passphrase; nothing is written meanwhile.
  vault.Stop();
  DebianGuest g(o);
  ASSERT_TRUE(g.PowerOn(&err)) << err;
  EXPECT_TRUE(g.WaitConsole("diskseal: enter the passphrase of /dev/vda2", 300)) << g.ConsoleTail();
  const std::string console = g.Console();
  EXPECT_NE(console.find("diskseal: no key source opened /dev/vda2; no disk labelled 'BEK VOLUME'; "
                         "the vault https://10.0.2.100:8000:"),
            std::string::npos)
      << g.ConsoleTail();
  g.PowerCut();
}

}  // namespace
}  // namespace ds::test
