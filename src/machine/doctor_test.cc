#include "machine/doctor.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <thread>
#include <cstdio>
#include <cstdlib>

#include <gtest/gtest.h>

#include <httplib.h>

#include "machine/state.h"
#include "machine/test_tree.h"
#include "vault/vault_crypto.h"
#include "vault_testutil.h"

namespace ds::machine {
namespace {

using test::MachineTree;

bool Contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// A small Azure-like machine: root ext4 on sda1, /data xfs on sdb1, /data2 ext4 on sdc; enough
// memory, device-mapper present, room for headers. Each test adds the one thing it checks.
class DoctorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    t.Block("sda", {.devno = "8:0"});
    t.Block("sda1", {.devno = "8:1", .partition = true});
    t.Device("sda1", test::Ext4Image(0x01, "root"));
    t.Block("sdb", {.devno = "8:16"});
    t.Block("sdb1", {.devno = "8:17", .partition = true});
    t.Device("sdb1", test::XfsImage(0x02, "data"));
    t.Block("sdc", {.devno = "8:32"});
    t.Device("sdc", test::Ext4Image(0x03, "data2"));
    t.Mount("8:1", "/", "ext4", "/dev/sda1");
    t.Mount("0:20", "/proc", "proc", "proc");
    t.Mount("8:17", "/data", "xfs", "/dev/sdb1");
    t.Mount("8:32", "/data2", "ext4", "/dev/sdc");
    t.File("proc/meminfo", "MemTotal:        8000000 kB\nMemFree:         6000000 kB\n"
                           "MemAvailable:    7000000 kB\n");
    t.File("proc/misc", " 58 fuse\n236 device-mapper\n");
    t.File("dev/mapper/control", "");
    t.File("dev/fuse", "");
    t.File("usr/bin/fusermount3", "");
    opts.free_bytes = {{"/var/lib/diskseal", 1ull << 30}, {"/data", 1ull << 30}, {"/data2", 1ull << 30}};
    opts.self_pid = -1;
  }

  Report Doctor() {
    MachineRoot root = t.Root();
    auto m = Discover(root);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    if (!m.ok()) return {};
    auto r = RunDoctor(root, *m, opts);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(r).value() : Report{};
  }
  static std::vector<Finding> Of(const Report& r, const std::string& check) {
    std::vector<Finding> out;
    for (const auto& f : r.findings)
      if (f.check == check) out.push_back(f);
    return out;
  }
  static std::string Text(const Report& r) { return FormatText(r); }

  void Proc(int pid, const std::string& comm, const std::string& cmdline = "") {
    std::string base = "proc/" + std::to_string(pid);
    t.File(base + "/comm", comm + "\n");
    std::string c = cmdline.empty() ? comm : cmdline;
    for (char& ch : c)
      if (ch == ' ') ch = '\0';
    t.File(base + "/cmdline", c + std::string(1, '\0'));
    t.Dir(base + "/fd");
    t.Symlink(base + "/cwd", "/");
    t.Symlink(base + "/root", "/");
    t.Symlink(base + "/exe", "/usr/bin/" + comm);
  }

  MachineTree t;
  DoctorOptions opts;
};

TEST_F(DoctorTest, CleanMachineHasNoBlockingFinding) {
  Report r = Doctor();
  EXPECT_FALSE(r.blocking()) << Text(r);
  EXPECT_EQ(r.targets, (std::vector<std::string>{"/data", "/data2"}));
  EXPECT_EQ(r.open_mode, "dm-crypt");
  EXPECT_TRUE(ReportStatus(r).ok());
}

TEST_F(DoctorTest, OpenFilesNamePidCommandAndPath) {
  Proc(812, "postgres");
  t.Symlink("proc/812/fd/7", "/data/base/16384/1259");
  t.Symlink("proc/812/fd/8", "/data/pg_wal/old (deleted)");
  Proc(900, "bash");
  t.Symlink("proc/900/cwd", "/data2/work");
  Proc(901, "sshd");  // only files on / : not in the way
  t.Symlink("proc/901/fd/3", "/var/log/auth.log");
  t.File("proc/902/comm", "java\n");
  t.File("proc/902/maps",
         "7f0000000000-7f0000001000 r-xp 00000000 08:20 1234 /data2/lib/libx.so\n"
         "7f0000001000-7f0000002000 r--p 00000000 08:01 99 /usr/lib/libc.so.6\n");
  Report r = Doctor();
  auto f = Of(r, "open-files");
  ASSERT_EQ(f.size(), 2u) << Text(r);
  EXPECT_EQ(f[0].severity, Severity::kBlocking);
  EXPECT_EQ(f[0].volume, "/data");
  EXPECT_EQ(f[0].evidence, (std::vector<std::string>{"pid 812 (postgres) fd 7 /data/base/16384/1259",
                                                     "pid 812 (postgres) fd 8 /data/pg_wal/old"}));
  EXPECT_EQ(f[1].volume, "/data2");
  EXPECT_TRUE(Contains(f[1].message, "2 processes")) << f[1].message;
  EXPECT_EQ(f[1].evidence, (std::vector<std::string>{"pid 900 (bash) cwd /data2/work",
                                                     "pid 902 (java) maps /data2/lib/libx.so"}));
  EXPECT_EQ(ReportStatus(r).code(), Code::kBusy);
}

// enable checks only the volumes it is about to start: findings on the others are not its business.
TEST_F(DoctorTest, OnlyRestrictsTheTargets) {
  Proc(900, "bash");
  t.Symlink("proc/900/cwd", "/data2/work");
  opts.only = {"/data"};
  Report r = Doctor();
  EXPECT_EQ(r.targets, (std::vector<std::string>{"/data"}));
  EXPECT_TRUE(Of(r, "open-files").empty()) << Text(r);
  EXPECT_TRUE(ReportStatus(r).ok());
  opts.only = {"/data2"};
  EXPECT_EQ(ReportStatus(Doctor()).code(), Code::kBusy);
}

// enable encrypts an adopted logical volume without unmounting it (online/adopt.h): files open
// there are reported, but they are in nobody's way; the other volumes still block.
TEST_F(DoctorTest, OpenFilesOnAVolumeThatStaysMountedDoNotBlock) {
  Proc(812, "postgres");
  t.Symlink("proc/812/fd/7", "/data/x");
  opts.no_unmount = {"/data"};
  Report r = Doctor();
  auto f = Of(r, "open-files");
  ASSERT_EQ(f.size(), 1u) << Text(r);
  EXPECT_EQ(f[0].severity, Severity::kInfo);
  EXPECT_TRUE(Contains(f[0].message, "without a remount")) << f[0].message;
  EXPECT_EQ(f[0].evidence, (std::vector<std::string>{"pid 812 (postgres) fd 7 /data/x"}));
  EXPECT_TRUE(ReportStatus(r).ok());
  Proc(900, "bash");
  t.Symlink("proc/900/cwd", "/data2/work");
  EXPECT_EQ(ReportStatus(Doctor()).code(), Code::kBusy);
}

TEST_F(DoctorTest, OpenFilesOfTheDeviceNodeAndBindMounts) {
  t.Mount("8:17", "/srv/www", "xfs", "/dev/sdb1", "/www");  // a bind mount of /data/www
  Proc(70, "dd");
  t.Symlink("proc/70/fd/0", "/dev/sdb1");
  Proc(71, "nginx");
  t.Symlink("proc/71/fd/5", "/srv/www/index.html");
  Report r = Doctor();
  auto f = Of(r, "open-files");
  ASSERT_EQ(f.size(), 1u) << Text(r);
  EXPECT_EQ(f[0].volume, "/data");
  EXPECT_EQ(f[0].evidence.size(), 2u);
}

TEST_F(DoctorTest, IgnoredCheckStaysVisibleButDoesNotBlock) {
  Proc(812, "postgres");
  t.Symlink("proc/812/fd/7", "/data/x");
  opts.ignore = {"open-files"};
  Report r = Doctor();
  auto f = Of(r, "open-files");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity, Severity::kInfo);
  EXPECT_TRUE(Contains(f[0].message, "ignored")) << f[0].message;
  EXPECT_FALSE(r.blocking());
  opts.ignore = {"no-such-check"};
  MachineRoot root = t.Root();
  auto m = Discover(root);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(RunDoctor(root, *m, opts).status().code(), Code::kInvalidArgument);
}

TEST_F(DoctorTest, ConcurrentPackageManagersAndEncryptionTools) {
  EXPECT_TRUE(Of(Doctor(), "concurrent-tools").empty());
  Proc(1000, "apt-get", "apt-get install -y nginx");
  Proc(1001, "python3", "python3 /usr/bin/unattended-upgrade");
  t.Symlink("proc/1001/fd/4", "/var/lib/dpkg/lock-frontend");
  t.File("proc/locks", "1: POSIX  ADVISORY  WRITE 1001 08:01:393 0 EOF\n");
  Proc(1002, "python3",
       "python3 /var/lib/waagent/Microsoft.Azure.Security.AzureDiskEncryptionForLinux-1.4.0.12/main/handle.py -enable");
  Proc(1003, "cryptsetup", "cryptsetup reencrypt --encrypt /dev/sdd");
  Proc(1004, "diskseal", "diskseal encrypt /dev/sde --header /var/lib/diskseal/sde.hdr");
  Proc(1005, "diskseal", "diskseal open /dev/sdf x");  // an open volume's daemon is not a change
  Report r = Doctor();
  auto f = Of(r, "concurrent-tools");
  ASSERT_EQ(f.size(), 1u) << Text(r);
  EXPECT_EQ(f[0].severity, Severity::kBlocking);
  ASSERT_EQ(f[0].evidence.size(), 5u) << Text(r);
  EXPECT_TRUE(Contains(f[0].evidence[0], "pid 1000 (apt-get): package manager"));
  EXPECT_TRUE(Contains(f[0].evidence[1], "holds /var/lib/dpkg/lock-frontend (locked, /proc/locks)"));
  EXPECT_TRUE(Contains(f[0].evidence[2], "the Azure Disk Encryption extension"));
  EXPECT_TRUE(Contains(f[0].evidence[3], "cryptsetup changing a device"));
  EXPECT_TRUE(Contains(f[0].evidence[4], "another diskseal encrypt"));
}

TEST_F(DoctorTest, SelinuxEnforcing) {
  t.File("sys/fs/selinux/enforce", "0");
  EXPECT_TRUE(Of(Doctor(), "selinux").empty());
  t.File("sys/fs/selinux/enforce", "1");
  auto f = Of(Doctor(), "selinux");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity, Severity::kInfo);
  EXPECT_TRUE(Contains(f[0].fix, "restorecon"));
}

TEST_F(DoctorTest, LvmLayout) {
  EXPECT_TRUE(Of(Doctor(), "lvm-layout").empty());
  t.Block("sdd", {.devno = "8:48", .holders = {"dm-0"}});
  t.Device("sdd", test::LvmPvImage("PVPVPVPVPVPVPVPVPVPVPVPVPVPVPVPV"));
  t.Block("dm-0", {.devno = "253:0", .slaves = {"sdd"}, .dm_name = "datavg-lv1",
                   .dm_uuid = "LVM-aaaaaaaa"});
  t.Mount("253:0", "/lv", "ext4", "/dev/mapper/datavg-lv1");
  auto f = Of(Doctor(), "lvm-layout");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].volume, "/lv");
  EXPECT_EQ(f[0].severity, Severity::kInfo);
}

// Root on an LV: enable encrypts the one physical volume under it; two PVs, or an LVM setting
// that would defeat diskseal's filter, block.
TEST_F(DoctorTest, LvmOsVolumeNamesThePhysicalVolumeOrWhatBlocksIt) {
  MachineTree lvm;
  lvm.Block("sda", {.devno = "8:0", .holders = {"dm-0"}});
  lvm.Device("sda", test::LvmPvImage("PVPVPVPVPVPVPVPVPVPVPVPVPVPVPVPV"));
  lvm.Block("dm-0", {.devno = "253:0", .slaves = {"sda"}, .dm_name = "rootvg-rootlv",
                     .dm_uuid = "LVM-bbbb"});
  lvm.Mount("253:0", "/", "xfs", "/dev/mapper/rootvg-rootlv");
  lvm.File("etc/lvm/lvm.conf", "devices {\n\t# use_devicesfile = 0\n}\n");
  auto run = [&]() {
    MachineRoot root = lvm.Root();
    auto m = Discover(root);
    EXPECT_TRUE(m.ok());
    opts.volume_type = VolumeType::kAll;
    auto r = RunDoctor(root, *m, opts);
    EXPECT_TRUE(r.ok());
    auto f = Of(*r, "lvm-layout");
    EXPECT_EQ(f.size(), 1u) << FormatText(*r);
    return f.empty() ? Finding{} : f[0];
  };
  Finding f = run();
  EXPECT_EQ(f.severity, Severity::kInfo);
  EXPECT_EQ(f.volume, "/");
  EXPECT_TRUE(Contains(f.message, "encrypts the physical volume /dev/sda")) << f.message;
  lvm.File("etc/lvm/lvmlocal.conf", "devices {\n\tuse_devicesfile = 1\n}\n");
  f = run();
  EXPECT_EQ(f.severity, Severity::kBlocking);
  EXPECT_TRUE(Contains(f.message, "use_devicesfile = 1")) << f.message;
  lvm.File("etc/lvm/lvmlocal.conf", "");
  lvm.Block("sdb", {.devno = "8:16", .holders = {"dm-0"}});
  lvm.Block("dm-0", {.devno = "253:0", .slaves = {"sda", "sdb"}, .dm_name = "rootvg-rootlv", .dm_uuid = "LVM-bbbb"});
  f = run();
  EXPECT_EQ(f.severity, Severity::kBlocking);
  EXPECT_TRUE(Contains(f.message, "spans 2 physical volumes")) << f.message;
}

TEST_F(DoctorTest, MemoryAgainstWhatDisksealNeeds) {
  auto f = Of(Doctor(), "memory");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity, Severity::kInfo);
  EXPECT_TRUE(Contains(f[0].message, "7 GB")) << f[0].message;
  t.File("proc/meminfo", "MemTotal: 1000000 kB\nMemAvailable:     600000 kB\n");
  f = Of(Doctor(), "memory");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity, Severity::kWarning);  // the PBKDF cost is lowered to half of 586 MiB
  EXPECT_TRUE(Contains(f[0].message, "293 MiB")) << f[0].message;
  t.File("proc/meminfo", "MemTotal: 100000 kB\nMemAvailable:     40000 kB\n");
  Report r = Doctor();
  f = Of(r, "memory");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity, Severity::kBlocking);
  EXPECT_EQ(ReportStatus(r).code(), Code::kNoMemory);
}

TEST_F(DoctorTest, NestedMountsSayWhichIsInWhich) {
  EXPECT_TRUE(Of(Doctor(), "nested-mounts").empty());
  t.Block("sdd", {.devno = "8:48"});
  t.Block("sde", {.devno = "8:64"});
  t.Mount("8:48", "/data3", "ext4", "/dev/sdd");
  t.Mount("8:64", "/data3/data4", "ext4", "/dev/sde");
  auto f = Of(Doctor(), "nested-mounts");
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(f[0].volume, "/data3");
  EXPECT_EQ(f[0].evidence, (std::vector<std::string>{"/data3/data4 (/dev/sde)"}));
  EXPECT_EQ(f[1].volume, "/data3/data4");
  EXPECT_TRUE(Contains(f[1].message, "/data3/data4 is nested in /data3")) << f[1].message;
}

TEST_F(DoctorTest, DataDisksUnderTheResourceDisk) {
  t.Block("sdd", {.devno = "8:48"});
  t.Block("sdd1", {.devno = "8:49", .partition = true});
  t.Device("sdd1", test::Ext4Image(0x09, "ephemeral0"));
  t.Block("sde", {.devno = "8:64"});
  t.Mount("8:49", "/mnt", "ext4", "/dev/sdd1");
  t.Mount("8:64", "/mnt/data1", "ext4", "/dev/sde");
  auto f = Of(Doctor(), "nested-mounts");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].volume, "/mnt/data1");
  EXPECT_TRUE(Contains(f[0].message, "nested in /mnt (the resource disk")) << f[0].message;
}

TEST_F(DoctorTest, FilesystemAndHeaderMode) {
  auto f = Of(Doctor(), "filesystem-mode");
  ASSERT_EQ(f.size(), 2u);
  for (const auto& x : f) EXPECT_EQ(x.severity, Severity::kInfo);
  EXPECT_TRUE(Contains(f[0].message, "xfs: the detached header works; shrinking does not"));
  EXPECT_TRUE(Contains(f[1].message, "ext4: the detached header and shrinking both work"));
  opts.header_mode = HeaderMode::kShrink;
  Report r = Doctor();
  f = Of(r, "filesystem-mode");
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(f[0].severity, Severity::kBlocking);
  EXPECT_EQ(f[0].volume, "/data");
  EXPECT_TRUE(Contains(f[0].fix, "--header-mode detached"));
  EXPECT_EQ(f[1].severity, Severity::kInfo);
  EXPECT_EQ(ReportStatus(r).code(), Code::kUnsupported);
}

TEST_F(DoctorTest, NoRoomForDetachedHeaders) {
  EXPECT_TRUE(Of(Doctor(), "header-space").empty());
  opts.free_bytes["/var/lib/diskseal"] = 20u << 20;  // one 16 MiB header fits, two do not
  auto f = Of(Doctor(), "header-space");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity, Severity::kBlocking);
  EXPECT_TRUE(Contains(f[0].message, "only 20 MiB free for 2 detached headers of 16 MiB"))
      << f[0].message;
}

TEST_F(DoctorTest, HeaderDirectoryOnATargetVolume) {
  opts.header_dir = "/data/headers";
  opts.free_bytes["/data/headers"] = 1ull << 30;
  auto f = Of(Doctor(), "header-location");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].volume, "/data");
  EXPECT_EQ(f[0].severity, Severity::kBlocking);
}

TEST_F(DoctorTest, NoRoomToShrink) {
  opts.header_mode = HeaderMode::kShrink;
  EXPECT_TRUE(Of(Doctor(), "shrink-space").empty());
  opts.free_bytes["/data2"] = 4u << 20;
  auto f = Of(Doctor(), "shrink-space");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].volume, "/data2");
  EXPECT_TRUE(Contains(f[0].message, "only 4 MiB free"));
}

TEST_F(DoctorTest, AlreadyEncrypted) {
  EXPECT_TRUE(Of(Doctor(), "already-encrypted").empty());
  t.Block("sdd", {.devno = "8:48", .holders = {"dm-1"}});
  t.Device("sdd", test::Luks2Image("aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"));
  t.Block("dm-1", {.devno = "253:1", .slaves = {"sdd"}, .dm_name = "secure",
                   .dm_uuid = "CRYPT-LUKS2-aaaaaaaabbbb4ccc8dddeeeeeeeeeeee-secure"});
  t.Mount("253:1", "/secure", "ext4", "/dev/mapper/secure");
  t.Block("sdf", {.devno = "8:80"});
  t.Device("sdf", test::Luks2Image("ffffffff-bbbb-4ccc-8ddd-eeeeeeeeeeee"));
  Report r = Doctor();
  auto f = Of(r, "already-encrypted");
  ASSERT_EQ(f.size(), 2u) << Text(r);
  EXPECT_EQ(f[0].volume, "/secure");
  EXPECT_EQ(f[1].volume, "/dev/sdf");
  EXPECT_TRUE(Of(r, "filesystem-mode").size() == 2u);  // nothing to decide for /secure
}

TEST_F(DoctorTest, InterruptedInPlaceOperationInAHeaderFile) {
  if (!ds::test::HaveProgram("cryptsetup")) GTEST_SKIP() << "cryptsetup not installed";
  EXPECT_TRUE(Of(Doctor(), "interrupted").empty());
  t.Dir("var/lib/diskseal");
  std::string data = t / "data.img", hdr = t / "var/lib/diskseal/sdb1.hdr", key = t / "key";
  ds::test::WriteFile(key, "pass");
  ds::test::WriteFile(data, std::string(32 << 20, '\0'));
  ds::test::WriteFile(hdr, std::string(16 << 20, '\0'));
  // cryptsetup's own interrupted state: the header says online-reencrypt-v2, no data written
  auto rc = ds::test::RunProgram({"cryptsetup", "reencrypt", "--encrypt", "--init-only", "-q",
                                  "--header", hdr, "--key-file", key, "--pbkdf", "pbkdf2",
                                  "--pbkdf-force-iterations", "1000", data});
  ASSERT_EQ(rc.exit_code, 0) << rc.err;
  auto f = Of(Doctor(), "interrupted");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].volume, "/var/lib/diskseal/sdb1.hdr");
  EXPECT_TRUE(Contains(f[0].fix, "diskseal resume DEVICE --header /var/lib/diskseal/sdb1.hdr"));
  // The same header at the start of a device (attached): the device is named
  t.Block("sdd", {.devno = "8:48"});
  ds::test::WriteFile(t / "dev/sdd", ds::test::ReadFileOrDie(hdr));
  ASSERT_EQ(::unlink(hdr.c_str()), 0);
  f = Of(Doctor(), "interrupted");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].volume, "/dev/sdd");
  EXPECT_EQ(f[0].fix, "resume it: diskseal resume /dev/sdd");
}

TEST_F(DoctorTest, KernelSupportChoosesTheOpenMode) {
  auto f = Of(Doctor(), "kernel-support");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity, Severity::kInfo);
  t.File("proc/misc", " 58 fuse\n");
  ASSERT_EQ(::unlink((t / "dev/mapper/control").c_str()), 0);
  Report r = Doctor();
  EXPECT_EQ(r.open_mode, "userspace");
  f = Of(r, "kernel-support");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity, Severity::kWarning);
  opts.volume_type = VolumeType::kOs;  // the root cannot be served through FUSE at boot
  EXPECT_EQ(Of(Doctor(), "kernel-support")[0].severity, Severity::kBlocking);
  opts.volume_type = VolumeType::kData;
  ASSERT_EQ(::unlink((t / "dev/fuse").c_str()), 0);
  r = Doctor();
  EXPECT_EQ(r.open_mode, "none");
  EXPECT_EQ(Of(r, "kernel-support")[0].severity, Severity::kBlocking);
}

// Issue 13: the OS volume's detached header goes to /boot, which the initramfs reads before / is
// unlocked. No separate /boot (only /boot/efi, as in many cloud images) is blocking, with the way
// out; so is a /boot that is on / itself, and a /boot without room for the header.
TEST_F(DoctorTest, OsVolumeWithoutASeparateBootIsBlockingWithTheWayOut) {
  t.File("usr/sbin/update-initramfs", "");
  t.Dir("etc/initramfs-tools");
  opts.volume_type = VolumeType::kOs;
  t.Block("sda15", {.devno = "8:15", .partition = true});
  t.Mount("8:15", "/boot/efi", "vfat", "/dev/sda15");  // the firmware's, not a /boot
  Report r = Doctor();
  auto f = Of(r, "header-location");
  ASSERT_EQ(f.size(), 1u) << Text(r);
  EXPECT_EQ(f[0].severity, Severity::kBlocking);
  EXPECT_EQ(f[0].volume, "/");
  EXPECT_TRUE(Contains(f[0].message, "no separate /boot")) << f[0].message;
  EXPECT_TRUE(Contains(f[0].fix, "separate /boot partition")) << f[0].fix;
  EXPECT_TRUE(Contains(f[0].fix, "at least 32 MiB free")) << f[0].fix;
  EXPECT_TRUE(Contains(f[0].fix, "a device of its own")) << f[0].fix;
  EXPECT_EQ(ExitCode(ReportStatus(r)), 7);
  // Data headers in /var/lib/diskseal on / are fine: / is unlocked before any data volume
  opts.volume_type = VolumeType::kAll;
  f = Of(Doctor(), "header-location");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].volume, "/");
  // Data alone: nothing about /boot
  opts.volume_type = VolumeType::kData;
  EXPECT_TRUE(Of(Doctor(), "header-location").empty());
}

TEST_F(DoctorTest, OsHeaderOnBootNeedsRoomThere) {
  t.File("usr/sbin/update-initramfs", "");
  t.Dir("etc/initramfs-tools");
  opts.volume_type = VolumeType::kOs;
  t.Block("sda2", {.devno = "8:2", .partition = true});
  t.Device("sda2", test::Ext4Image(0x05, "boot"));
  t.Mount("8:2", "/boot", "ext4", "/dev/sda2");
  opts.free_bytes["/boot"] = 200u << 20;
  Report r = Doctor();
  EXPECT_TRUE(Of(r, "header-location").empty()) << Text(r);
  EXPECT_TRUE(Of(r, "header-space").empty()) << Text(r);
  EXPECT_FALSE(r.blocking()) << Text(r);
  opts.free_bytes["/boot"] = 10u << 20;  // less than the 16 MiB header
  r = Doctor();
  auto f = Of(r, "header-space");
  ASSERT_EQ(f.size(), 1u) << Text(r);
  EXPECT_EQ(f[0].severity, Severity::kBlocking);
  EXPECT_EQ(f[0].volume, "/boot");
  EXPECT_TRUE(Contains(f[0].message, "only 10 MiB free on /boot for the OS volume's 16 MiB detached header "
                                     "(/boot/luks/osluksheader)")) << f[0].message;
  EXPECT_EQ(ExitCode(ReportStatus(r)), 6);
  opts.free_bytes["/boot"] = 20u << 20;  // the header fits, little else
  f = Of(Doctor(), "header-space");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity, Severity::kWarning);
}

TEST_F(DoctorTest, OsHeaderOnTheVolumeBeingEncryptedIsRefused) {
  t.File("usr/sbin/update-initramfs", "");
  t.Dir("etc/initramfs-tools");
  opts.volume_type = VolumeType::kOs;
  opts.free_bytes["/boot"] = 1ull << 30;
  // /boot bind-mounted from a directory of / itself: it is still the root filesystem
  t.Mount("8:1", "/boot", "ext4", "/dev/sda1", "/boot");
  Report r = Doctor();
  auto f = Of(r, "header-location");
  ASSERT_EQ(f.size(), 1u) << Text(r);
  EXPECT_EQ(f[0].severity, Severity::kBlocking);
  EXPECT_TRUE(Contains(f[0].message, "/boot/luks/osluksheader is on /")) << f[0].message;
  EXPECT_TRUE(Contains(f[0].message, "which is to be encrypted")) << f[0].message;
  EXPECT_EQ(ExitCode(ReportStatus(r)), 7);
}

TEST_F(DoctorTest, OsNeedsInitramfsToolsAndDracutIsNotSupportedYet) {
  t.Block("sda2", {.devno = "8:2", .partition = true});
  t.Device("sda2", test::Ext4Image(0x05, "boot"));
  t.Mount("8:2", "/boot", "ext4", "/dev/sda2");
  opts.free_bytes["/boot"] = 1ull << 30;
  opts.volume_type = VolumeType::kOs;
  Report r = Doctor();
  auto f = Of(r, "initramfs");
  ASSERT_EQ(f.size(), 1u) << Text(r);
  EXPECT_EQ(f[0].severity, Severity::kBlocking);
  EXPECT_TRUE(Contains(f[0].message, "initramfs-tools is not installed")) << f[0].message;
  EXPECT_TRUE(Contains(f[0].fix, "apt-get install initramfs-tools")) << f[0].fix;
  EXPECT_EQ(ExitCode(ReportStatus(r)), 7);
  // the command without its configuration is not initramfs-tools either
  t.File("usr/sbin/update-initramfs", "");
  EXPECT_EQ(Of(Doctor(), "initramfs")[0].severity, Severity::kBlocking);
  t.Dir("etc/initramfs-tools");
  r = Doctor();
  f = Of(r, "initramfs");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity, Severity::kInfo);
  EXPECT_FALSE(r.blocking()) << Text(r);
  // dracut only (a RHEL-style machine): said as not supported yet
  ASSERT_EQ(::unlink((t / "usr/sbin/update-initramfs").c_str()), 0);
  ASSERT_EQ(::rmdir((t / "etc/initramfs-tools").c_str()), 0);
  t.File("usr/bin/dracut", "");
  t.File("etc/dracut.conf", "");
  r = Doctor();
  f = Of(r, "initramfs");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity, Severity::kBlocking);
  EXPECT_TRUE(Contains(f[0].message, "dracut is not supported yet")) << f[0].message;
  EXPECT_TRUE(std::find(f[0].evidence.begin(), f[0].evidence.end(), "dracut: /usr/bin/dracut") != f[0].evidence.end());
  EXPECT_EQ(ExitCode(ReportStatus(r)), 7);
  // Data volumes do not need the initramfs
  opts.volume_type = VolumeType::kData;
  EXPECT_TRUE(Of(Doctor(), "initramfs").empty());
}

// Issue 13: the detached headers of the volumes enable recorded. A missing or unreadable one is
// blocking, with `repair --vault` as the way out when it was escrowed; without vault options the
// stale check says it was skipped. (With a real vault: tests/engine_vault_test.cc.)
TEST_F(DoctorTest, RecordedVolumeWithAMissingOrUnreadableHeader) {
  opts.state_dir = "/var/lib/diskseal";
  EXPECT_TRUE(Of(Doctor(), "volume-header").empty());
  t.Dir("var/lib/diskseal");
  StateDir sd(*PosixEnv(), t / "var/lib/diskseal");
  ASSERT_TRUE(sd.Prepare().ok());
  const std::string uuid = "0b6e1c9a-7f00-4d6e-9a53-3c2b1a0f9e11";
  VolumeRecord rec;
  rec.name = uuid;
  rec.device = "/dev/sdb1";
  rec.mountpoint = "/data";
  rec.fstype = "xfs";
  rec.header = "/var/lib/diskseal/headers/" + uuid + ".luks2";
  rec.key_file = "/var/lib/diskseal/keys/" + uuid + ".key";
  rec.secret_id = "https://vault:8443/secrets/diskseal-" + uuid + "/0123456789abcdef";
  rec.step = Step::kPlanned;  // no header placed yet: nothing to check
  ASSERT_TRUE(sd.Save(rec).ok());
  EXPECT_TRUE(Of(Doctor(), "volume-header").empty());
  rec.step = Step::kConfigured;
  ASSERT_TRUE(sd.Save(rec).ok());
  Report r = Doctor();
  auto f = Of(r, "volume-header");
  ASSERT_EQ(f.size(), 1u) << Text(r);
  EXPECT_EQ(f[0].severity, Severity::kBlocking);
  EXPECT_EQ(f[0].volume, "/data");
  EXPECT_TRUE(Contains(f[0].message, rec.header + " of /dev/sdb1 is missing")) << f[0].message;
  EXPECT_TRUE(Contains(f[0].fix, "diskseal repair /dev/sdb1 --header " + rec.header + " --uuid " + uuid +
                                     " --vault URL --vault-token-file F")) << f[0].fix;
  EXPECT_TRUE(std::find(f[0].evidence.begin(), f[0].evidence.end(),
                        "vault: not checked (give doctor --vault ... to see what it holds)") != f[0].evidence.end());
  EXPECT_EQ(ExitCode(ReportStatus(r)), 4);
  // garbage in its place: unreadable, the same way out
  t.File("var/lib/diskseal/headers/" + uuid + ".luks2", std::string(64 << 10, 'x'));
  f = Of(Doctor(), "volume-header");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity, Severity::kBlocking);
  EXPECT_TRUE(Contains(f[0].message, "does not read as a LUKS2 header")) << f[0].message;
  // not escrowed (enable --no-escrow): the way out is the admin's own backup
  rec.secret_id.clear();
  ASSERT_TRUE(sd.Save(rec).ok());
  f = Of(Doctor(), "volume-header");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_TRUE(Contains(f[0].fix, "from your own header backup")) << f[0].fix;
  // without --state-dir (enable's own run) the records are not read
  opts.state_dir.clear();
  EXPECT_TRUE(Of(Doctor(), "volume-header").empty());
}

TEST_F(DoctorTest, NoTargets) {
  opts.volume_type = VolumeType::kOs;
  Report r = Doctor();
  EXPECT_EQ(r.targets, (std::vector<std::string>{"/"}));
  EXPECT_TRUE(Of(r, "no-targets").empty());
  MachineTree empty;
  empty.Mount("8:1", "/", "ext4", "/dev/sda1");
  MachineRoot root = empty.Root();
  auto m = Discover(root);
  ASSERT_TRUE(m.ok());
  opts.volume_type = VolumeType::kData;
  auto r2 = RunDoctor(root, *m, opts);
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(Of(*r2, "no-targets").size(), 1u);
}

TEST_F(DoctorTest, TextAndJson) {
  Proc(812, "postgres");
  t.Symlink("proc/812/fd/7", "/data/x");
  Report r = Doctor();
  std::string text = FormatText(r);
  EXPECT_EQ(text.substr(0, text.find('\n')),
            "blocking open-files /data: 1 process holds files open on /data: it cannot be "
            "unmounted to encrypt it");
  EXPECT_TRUE(Contains(text, "\n    pid 812 (postgres) fd 7 /data/x\n    fix: stop them"));
  auto j = ToJson(r);
  EXPECT_EQ(j["blocking"], true);
  EXPECT_EQ(j["exit_code"], 5);
  EXPECT_EQ(j["open_mode"], "dm-crypt");
  EXPECT_EQ(j["findings"][0]["check"], "open-files");
  EXPECT_EQ(j["findings"][0]["severity"], "blocking");
  EXPECT_EQ(j["findings"][0]["evidence"][0], "pid 812 (postgres) fd 7 /data/x");
}

TEST_F(DoctorTest, CliRunsOnACapturedTree) {
  Proc(812, "postgres");
  t.Symlink("proc/812/fd/7", "/data/x");
  t.Root();
  // the CLI statvfs'es the captured header dir: it exists, on this machine's filesystem
  t.Dir("var/lib/diskseal");
  auto r = ds::test::Diskseal({"doctor", "--root", t.dir(), "--json"});
  EXPECT_EQ(r.exit_code, 5) << r.err;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["findings"][0]["check"], "open-files");
  r = ds::test::Diskseal({"doctor", "--root", t.dir(), "--ignore", "open-files"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(Contains(r.out, "info open-files /data: ignored")) << r.out;
  r = ds::test::Diskseal({"doctor", "--root", t.dir(), "--volume-type", "Nope"});
  EXPECT_EQ(r.exit_code, 1);
}

// ~500 mounts and ~3000 processes: the result is still exact (the time is printed, and measured
// in bench/doctor_bench.sh, not asserted).
TEST_F(DoctorTest, HundredsOfMountsThousandsOfProcesses) {
  for (int i = 0; i < 500; ++i) {
    std::string name = "vd" + std::to_string(i);
    std::string devno = "252:" + std::to_string(i);
    t.Block(name, {.devno = devno});
    t.Mount(devno, "/srv/d" + std::to_string(i), "ext4", "/dev/" + name);
  }
  for (int pid = 2000; pid < 5000; ++pid) {
    std::string base = "proc/" + std::to_string(pid);
    t.File(base + "/comm", "worker\n");
    t.File(base + "/cmdline", std::string("worker\0-x\0", 10));
    t.Symlink(base + "/cwd", "/");
    t.Symlink(base + "/fd/0", "/dev/null");
    t.Symlink(base + "/fd/1", "/var/log/w.log");
    t.Symlink(base + "/fd/2", "socket:[1234]");
    if (pid % 10 == 0) t.Symlink(base + "/fd/3", "/srv/d" + std::to_string(pid % 500) + "/f");
  }
  MachineRoot root = t.Root();
  auto start = std::chrono::steady_clock::now();
  auto m = Discover(root);
  ASSERT_TRUE(m.ok());
  auto r = RunDoctor(root, *m, opts);
  ASSERT_TRUE(r.ok());
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::printf("doctor over 502 mounts and 3000 processes: %.0f ms\n", ms);
  EXPECT_EQ(r->targets.size(), 502u);
  auto f = Of(*r, "open-files");
  // pids 2000, 2010, ... 4990: 300 processes on 50 volumes (/srv/d0, /srv/d10, ..., /srv/d490)
  ASSERT_EQ(f.size(), 50u);
  size_t holders = 0;
  for (const auto& x : f) holders += x.evidence.size();
  EXPECT_EQ(holders, 300u);
}

TEST(DoctorLive, ThisMachine) {
  MachineRoot root;
  root.env = PosixEnv();
  auto m = Discover(root);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  DoctorOptions o;
  o.volume_type = VolumeType::kAll;
  o.self_pid = int(::getpid());
  auto r = RunDoctor(root, *m, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::printf("%s", FormatText(*r).c_str());
  // What the kernel offers, read here independently of the doctor's code
  auto misc = PosixEnv()->ReadFile("/proc/misc", 1 << 20);
  std::string all = misc.ok() ? *misc : "";
  bool dm = all.find("device-mapper") != std::string::npos && ::access("/dev/mapper/control", F_OK) == 0;
  bool fuse = ::access("/dev/fuse", F_OK) == 0 &&
              (::access("/usr/bin/fusermount3", F_OK) == 0 || ::access("/bin/fusermount3", F_OK) == 0);
  EXPECT_EQ(r->open_mode, dm ? "dm-crypt" : fuse ? "userspace" : "none");
}

// --- the vault, stage by stage, against the real server on loopback ---

class DoctorVaultTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new ds::test::TempDir();
    server_ = new ds::test::VaultProcess(*dir_ / "vault");
    server_->Start();
    all_ = server_->Token("all", "all");
    getonly_ = server_->Token("getonly", "secrets:get,keys:get,keys:wrap,keys:unwrap");
    auto c = vault::VaultClient::Create(*PosixEnv(), server_->ClientOptions(all_));
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE((*c)->CreateKey("kek", "RSA", 2048).ok());
  }
  static void TearDownTestSuite() {
    delete server_;
    delete dir_;
  }

  // Only the vault finding, from a tree with no volumes to check.
  std::vector<Finding> Vault(vault::VaultClientOptions vo, const std::string& kek = "") {
    vo.connect_timeout_ms = 10000;
    DoctorOptions o;
    o.vault = vo;
    o.kek = kek;
    MachineRoot root = tree_.Root();
    auto m = Discover(root);
    EXPECT_TRUE(m.ok());
    auto r = RunDoctor(root, *m, o);
    EXPECT_TRUE(r.ok());
    std::vector<Finding> out;
    for (const auto& f : r->findings)
      if (f.check == "vault") out.push_back(f);
    return out;
  }
  static int ClosedPort() {
    int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(s);  // nothing listens there now: connect is refused
    return ntohs(a.sin_port);
  }

  MachineTree tree_;
  static ds::test::TempDir* dir_;
  static ds::test::VaultProcess* server_;
  static std::string all_, getonly_;
};
ds::test::TempDir* DoctorVaultTest::dir_ = nullptr;
ds::test::VaultProcess* DoctorVaultTest::server_ = nullptr;
std::string DoctorVaultTest::all_, DoctorVaultTest::getonly_;

TEST_F(DoctorVaultTest, AllStagesPass) {
  auto f = Vault(server_->ClientOptions(all_), "kek");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity, Severity::kInfo) << f[0].message;
  EXPECT_EQ(f[0].evidence.back(), "permissions: ok");
}

TEST_F(DoctorVaultTest, Dns) {
  auto vo = server_->ClientOptions(all_);
  vo.url = "https://vault.diskseal.invalid:" + std::to_string(server_->port());
  auto f = Vault(vo);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity, Severity::kBlocking);
  EXPECT_EQ(f[0].message.substr(0, 4), "dns:") << f[0].message;
}

TEST_F(DoctorVaultTest, TcpConnect) {
  auto vo = server_->ClientOptions(all_);
  vo.url = "https://127.0.0.1:" + std::to_string(ClosedPort());
  auto f = Vault(vo);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].message.substr(0, 4), "tcp:") << f[0].message;
  EXPECT_EQ(f[0].code, Code::kNetwork);
}

TEST_F(DoctorVaultTest, DeadProxyIsNamed) {
  std::string proxy = "http://127.0.0.1:" + std::to_string(ClosedPort());
  ::setenv("https_proxy", proxy.c_str(), 1);
  auto f = Vault(server_->ClientOptions(all_));
  ::unsetenv("https_proxy");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].message.substr(0, 6), "proxy:") << f[0].message;
  EXPECT_EQ(f[0].evidence[0], "proxy: " + proxy);
  // no_proxy takes the vault out of the proxy: then it works
  ::setenv("https_proxy", proxy.c_str(), 1);
  ::setenv("no_proxy", "localhost,127.0.0.1", 1);
  f = Vault(server_->ClientOptions(all_));
  ::unsetenv("https_proxy");
  ::unsetenv("no_proxy");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity, Severity::kInfo) << f[0].message;
}

TEST_F(DoctorVaultTest, NotTls) {
  // a plain TCP server that answers in clear text: the TLS handshake is the stage that fails
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ASSERT_EQ(::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(s, 4), 0);
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  std::thread server([s] {
    int c = ::accept(s, nullptr, nullptr);
    if (c < 0) return;
    const char reply[] = "HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    (void)!::write(c, reply, sizeof reply - 1);
    ::close(c);
  });
  auto vo = server_->ClientOptions(all_);
  vo.url = "https://127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  auto f = Vault(vo);
  server.join();
  ::close(s);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].message.substr(0, 4), "tls:") << f[0].message;
}

TEST_F(DoctorVaultTest, HttpsServerThatIsNotAVault) {
  // TLS verifies, but the answer is a web page: the HTTP stage is the one that fails
  vault::TlsFiles tls{*dir_ / "web-ca.pem", *dir_ / "web-ca.key", *dir_ / "web.pem", *dir_ / "web.key"};
  ASSERT_TRUE(vault::CreateTlsIdentity(*PosixEnv(), tls, {"127.0.0.1"}).ok());
  httplib::SSLServer web(tls.server_cert.c_str(), tls.server_key.c_str());
  ASSERT_TRUE(web.is_valid());
  web.Get(".*", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("<html>welcome</html>", "text/html");
  });
  int port = web.bind_to_any_port("127.0.0.1");  // listening from here: connects queue
  ASSERT_GT(port, 0);
  std::thread serve([&] { web.listen_after_bind(); });
  auto vo = server_->ClientOptions(all_);
  vo.url = "https://127.0.0.1:" + std::to_string(port);
  vo.ca_file = tls.ca_cert;
  auto f = Vault(vo);
  web.stop();
  serve.join();
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].message.substr(0, 5), "http:") << f[0].message;
}

TEST_F(DoctorVaultTest, WrongCa) {
  auto vo = server_->ClientOptions(all_);
  vo.ca_file = "/etc/ssl/certs/ca-certificates.crt";  // public CAs: the vault's own CA is not one
  if (::access(vo.ca_file.c_str(), R_OK) != 0) GTEST_SKIP() << "no system CA bundle";
  auto f = Vault(vo);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].message.substr(0, 11), "tls-verify:") << f[0].message;
}

TEST_F(DoctorVaultTest, BadToken) {
  std::string bad = *dir_ / "bad.token";
  ds::test::WriteFile(bad, "not-a-token");
  auto f = Vault(server_->ClientOptions(bad));
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].message.substr(0, 15), "authentication:") << f[0].message;
  EXPECT_EQ(f[0].code, Code::kPermissionDenied);
}

TEST_F(DoctorVaultTest, MissingPermissionIsNamed) {
  auto f = Vault(server_->ClientOptions(getonly_), "kek");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity, Severity::kBlocking);
  EXPECT_EQ(f[0].message, "permission: the token may not secrets:set");
  EXPECT_EQ(f[0].code, Code::kPermissionDenied);
}

// Issue 10: doctor asks for exactly the permissions encrypt and enable use with --kek (the README's
// host token: secrets get/set, keys wrap/unwrap; no keys:get), and names a missing one.
TEST_F(DoctorVaultTest, TheHostTokenThatEncryptsPassesAndNothingMore) {
  const std::string host = server_->Token("host", "secrets:get,secrets:set,keys:wrap,keys:unwrap");
  auto f = Vault(server_->ClientOptions(host), "kek");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].severity, Severity::kInfo) << f[0].message;
  const std::string nounwrap = server_->Token("nounwrap", "secrets:get,secrets:set,keys:wrap");
  f = Vault(server_->ClientOptions(nounwrap), "kek");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].message, "permission: the token may not keys:unwrap");
  // without keys:wrap the key's existence is not known either: the permission is what is named
  const std::string nowrap = server_->Token("nowrap", "secrets:get,secrets:set,keys:unwrap");
  f = Vault(server_->ClientOptions(nowrap), "nokey");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].message, "permission: the token may not keys:wrap");
}

TEST_F(DoctorVaultTest, MissingKek) {
  auto f = Vault(server_->ClientOptions(all_), "nokey");
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].message.substr(0, 4), "key:") << f[0].message;
}

}  // namespace
}  // namespace ds::machine
