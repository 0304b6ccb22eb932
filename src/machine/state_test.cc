// State records, the machine lock and the fstab/crypttab edits of enable/disable.
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "machine/config.h"
#include "machine/state.h"
#include "machine/test_tree.h"
#include "testlib.h"

namespace ds::machine {
namespace {

VolumeRecord SampleRecord() {
  VolumeRecord r;
  r.name = "0b1c2d3e-0000-4000-8000-000000000001";
  r.device = "/dev/sdc1";
  r.mountpoint = "/data one";
  r.fstype = "xfs";
  r.mount_options = "rw,noatime";
  r.fstab = FstabEntry{"UUID=abcd", "/data one", "xfs", "defaults,noatime", 0, 2};
  r.header = "/var/lib/diskseal/headers/x.luks2";
  r.key_file = "/var/lib/diskseal/keys/x.key";
  r.secret_id = "https://v/secrets/diskseal-x/1";
  r.loop = "/dev/loop3";
  r.step = Step::kEncrypting;
  r.rate = Rate{1234, 5 << 20, 10 << 20, 81.5, 12, 1700000000};
  r.last_error = "boom";
  return r;
}

TEST(StateTest, RecordRoundTripsEveryField) {
  VolumeRecord r = SampleRecord();
  auto back = RecordFromJson(RecordToJson(r), "x");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(RecordToJson(*back), RecordToJson(r));
  EXPECT_EQ(back->step, Step::kEncrypting);
  ASSERT_TRUE(back->fstab);
  EXPECT_EQ(back->fstab->options, "defaults,noatime");
  EXPECT_EQ(back->rate.mib_s, 81.5);
}

TEST(StateTest, EveryStepNameParsesBack) {
  for (int s = int(Step::kPlanned); s <= int(Step::kDisabled); ++s) {
    auto p = ParseStep(StepName(Step(s)));
    ASSERT_TRUE(p.ok()) << StepName(Step(s));
    EXPECT_EQ(int(*p), s);
  }
  EXPECT_EQ(ParseStep("halfway").status().code(), Code::kCorrupt);
}

TEST(StateTest, BadRecordsAreCorruptNotCrashes) {
  EXPECT_EQ(RecordFromJson("{", "f").status().code(), Code::kCorrupt);
  EXPECT_EQ(RecordFromJson("[]", "f").status().code(), Code::kCorrupt);
  EXPECT_EQ(RecordFromJson(R"({"name":"a"})", "f").status().code(), Code::kCorrupt);
  std::string j = RecordToJson(SampleRecord());
  std::string bad = j;
  bad.replace(bad.find("\"encrypting\""), 12, "\"sideways\"");
  EXPECT_EQ(RecordFromJson(bad, "f").status().code(), Code::kCorrupt);
  bad = j;
  bad.replace(bad.find("0b1c2d3e"), 8, "../../et");
  EXPECT_EQ(RecordFromJson(bad, "f").status().code(), Code::kCorrupt);
}

TEST(StateTest, DirSavesListsAndForgets) {
  ds::test::TempDir t;
  StateDir dir(*PosixEnv(), t.path());
  ASSERT_TRUE(dir.Prepare().ok());
  VolumeRecord a = SampleRecord(), b = SampleRecord();
  b.name = "0b1c2d3e-0000-4000-8000-000000000002";
  b.mountpoint = "/aaa";
  ASSERT_TRUE(dir.Save(a).ok());
  ASSERT_TRUE(dir.Save(b).ok());
  ds::test::WriteFile(t / "volumes/leftover.json.tmp-99", "{");  // a crash mid-write is not a record
  auto list = dir.List();
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[0].mountpoint, "/aaa");  // sorted by mount point
  ASSERT_TRUE(dir.Forget(b.name).ok());
  ASSERT_TRUE(dir.Forget(b.name).ok());  // twice is fine (a repeated step)
  EXPECT_EQ(dir.List()->size(), 1u);
}

TEST(StateTest, MissingStateDirHasNoRecords) {
  StateDir dir(*PosixEnv(), "/nonexistent/diskseal-state");
  auto list = dir.List();
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->empty());
}

TEST(StateTest, LockRefusesASecondHolderNamingTheFirst) {
  ds::test::TempDir t;
  const std::string path = t / "lock";
  // The holder is another process, as in real use (flock is per open file, so a second open in
  // this process would conflict too; a child makes the PID in the message differ from ours).
  int ready[2], release[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(release), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto l = MachineLock::Acquire(path, "diskseal enable --volume-type Data", false, nullptr);
    char c = l.ok() ? 'y' : 'n';
    (void)!::write(ready[1], &c, 1);
    (void)!::read(release[0], &c, 1);
    ::_exit(0);
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ASSERT_EQ(c, 'y');
  EXPECT_EQ(MachineLock::Holder(path),
            "pid " + std::to_string(child) + " (diskseal enable --volume-type Data)");
  auto second = MachineLock::Acquire(path, "diskseal disable", false, nullptr);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), Code::kBusy);
  EXPECT_NE(second.status().message().find("pid " + std::to_string(child)), std::string::npos)
      << second.status().message();
  // Waiting: told who holds it (and only then is the holder let go, so the wait is certain),
  // then gets the lock once the holder exits.
  std::string told;
  {
    auto waited = MachineLock::Acquire(path, "diskseal disable", true, [&](const std::string& who) {
      told = who;
      (void)!::write(release[1], "x", 1);
    });
    ASSERT_TRUE(waited.ok()) << waited.status().ToString();
    int st = 0;
    ::waitpid(child, &st, 0);
    EXPECT_EQ(told, "pid " + std::to_string(child) + " (diskseal enable --volume-type Data)");
    EXPECT_EQ(MachineLock::Holder(path), "pid " + std::to_string(::getpid()) + " (diskseal disable)");
  }
  EXPECT_EQ(MachineLock::Holder(path), "");
}

// A detached-header device has no LUKS UUID to be found by at boot: crypttab names it by a link
// that survives renaming (by-id, else PARTUUID), or by its path when it has none (a loop device).
TEST(ConfigTest, StableDeviceSpecPrefersByIdThenPartuuid) {
  ds::machine::test::MachineTree t;
  t.Symlink("dev/disk/by-id/wwn-0x5000", "../../sdb");
  t.Symlink("dev/disk/by-id/scsi-360022480abc-part1", "../../sdb1");
  t.Symlink("dev/disk/by-partuuid/4f1c-01", "../../sdb1");
  t.Symlink("dev/disk/by-partuuid/77aa-02", "../../sdc2");
  MachineRoot root = t.Root();
  EXPECT_EQ(StableDeviceSpec(*PosixEnv(), root, "/dev/sdb1"), "/dev/disk/by-id/scsi-360022480abc-part1");
  EXPECT_EQ(StableDeviceSpec(*PosixEnv(), root, "/dev/sdc2"), "PARTUUID=77aa-02");
  EXPECT_EQ(StableDeviceSpec(*PosixEnv(), root, "/dev/loop3"), "/dev/loop3");
  // The initramfs resolves names with blkid, before udev's by-id links may exist: PARTUUID first.
  EXPECT_EQ(BootDeviceSpec(*PosixEnv(), root, "/dev/sdb1"), "PARTUUID=4f1c-01");
  EXPECT_EQ(BootDeviceSpec(*PosixEnv(), root, "/dev/sdb"), "/dev/disk/by-id/wwn-0x5000");
  EXPECT_EQ(BootDeviceSpec(*PosixEnv(), root, "/dev/loop3"), "/dev/loop3");
}

// The OS volume's record keeps its mapping name apart from its LUKS2 UUID.
TEST(StateTest, OsRecordRoundTripsWithItsUuid) {
  VolumeRecord r;
  r.os = true;
  r.name = "osencrypt";
  r.uuid = "11111111-0000-4000-8000-0000000000aa";
  r.device = "/dev/sda2";
  r.mountpoint = "/";
  r.fstype = "ext4";
  r.header = "/boot/luks/osluksheader";
  r.key_file = "/var/lib/diskseal/keys/x.key";
  auto back = RecordFromJson(RecordToJson(r), "test");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back->os);
  EXPECT_FALSE(back->lvm);
  EXPECT_EQ(back->LuksUuid(), r.uuid);
  r.lvm = true;  // / on an LV, `device` the physical volume under it
  auto lvm = RecordFromJson(RecordToJson(r), "test");
  ASSERT_TRUE(lvm.ok());
  EXPECT_TRUE(lvm->lvm);
  r.lvm = false;
  VolumeRecord data = r;
  data.os = false;
  data.uuid.clear();
  auto d = RecordFromJson(RecordToJson(data), "test");
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->os);
  EXPECT_EQ(d->LuksUuid(), "osencrypt");  // a data volume's name is its UUID
  EXPECT_EQ(RecordToJson(data).find("\"os\""), std::string::npos);  // older readers see nothing new
}

TEST(ConfigTest, CrypttabAndFstabLinesHaveAdesShape) {
  EXPECT_EQ(CrypttabLine("u-1", "/dev/disk/by-id/scsi-1", "/var/lib/diskseal/keys/u-1.key", "/var/lib/diskseal/headers/u-1.luks2"),
            "u-1 /dev/disk/by-id/scsi-1 /var/lib/diskseal/keys/u-1.key luks,nofail,header=/var/lib/diskseal/headers/u-1.luks2");
  FstabEntry orig{"UUID=abcd", "/data", "ext4", "defaults,noatime", 0, 2};
  EXPECT_EQ(FstabLine(MappingFstabEntry("u-1", "/data", "ext4", orig)),
            "/dev/mapper/u-1 /data ext4 defaults,noatime,nofail 0 2");
  orig.options = "nofail";
  EXPECT_EQ(FstabLine(MappingFstabEntry("u-1", "/my data", "xfs", orig)),
            "/dev/mapper/u-1 /my\\040data xfs nofail 0 2");
  EXPECT_EQ(FstabLine(MappingFstabEntry("u-1", "/d", "xfs", std::nullopt)),
            "/dev/mapper/u-1 /d xfs defaults,nofail 0 2");
}

TEST(ConfigTest, EditsTouchOnlyTheirLineAndRepeatToTheSameFile) {
  const std::string fstab =
      "# /etc/fstab: static file system information.\n"
      "UUID=root / ext4 errors=remount-ro 0 1\n"
      "\n"
      "UUID=abcd   /my\\040data   ext4   defaults   0   2\n"
      "/dev/sdd1 /other xfs defaults 0 2\n";
  const std::string line = "/dev/mapper/u-1 /my\\040data ext4 defaults,nofail 0 2";
  std::string once = SetFstabLine(fstab, "/my data", line);
  EXPECT_EQ(once,
            "# /etc/fstab: static file system information.\n"
            "UUID=root / ext4 errors=remount-ro 0 1\n"
            "\n" + line + "\n"
            "/dev/sdd1 /other xfs defaults 0 2\n");
  EXPECT_EQ(SetFstabLine(once, "/my data", line), once);
  // Back to the original line, and removal.
  EXPECT_EQ(SetFstabLine(once, "/my data", std::string("UUID=abcd   /my\\040data   ext4   defaults   0   2")), fstab);
  EXPECT_EQ(SetFstabLine(once, "/my data", std::nullopt).find("/my"), std::string::npos);
  // A volume with no fstab line gets one appended; a file without final newline keeps its lines.
  EXPECT_EQ(SetFstabLine("UUID=root / ext4 defaults 0 1", "/d", std::string("X /d xfs nofail 0 2")),
            "UUID=root / ext4 defaults 0 1\nX /d xfs nofail 0 2\n");

  const std::string ct = "# <target name> <source device> <key file> <options>\nswap /dev/sdb2 /dev/urandom swap\n";
  std::string with = SetCrypttabLine(ct, "u-1", std::string("u-1 UUID=u-1 /k luks,nofail,header=/h"));
  EXPECT_EQ(with, ct + "u-1 UUID=u-1 /k luks,nofail,header=/h\n");
  EXPECT_EQ(SetCrypttabLine(with, "u-1", std::string("u-1 UUID=u-1 /k luks,nofail,header=/h")), with);
  EXPECT_EQ(SetCrypttabLine(with, "u-1", std::nullopt), ct);
}

TEST(ConfigTest, ApplyKeepsTheFirstBackupAndWritesAtomically) {
  ds::test::TempDir t;
  MachineRoot root;
  root.dir = t.path();
  root.etc_dir = t / "etc";
  root.env = PosixEnv();
  ASSERT_EQ(::mkdir(root.etc_dir.c_str(), 0755), 0);
  ds::test::WriteFile(t / "etc/fstab", "UUID=root / ext4 defaults 0 1\n");
  auto add = [](const std::string& l) {
    return [l](std::string_view text) { return SetFstabLine(text, "/d", l); };
  };
  ASSERT_TRUE(ApplyEtcEdit(*PosixEnv(), root, "fstab", add("A /d xfs nofail 0 2")).ok());
  ASSERT_TRUE(ApplyEtcEdit(*PosixEnv(), root, "fstab", add("B /d xfs nofail 0 2")).ok());
  EXPECT_EQ(ds::test::ReadFileOrDie(t / "etc/fstab"), "UUID=root / ext4 defaults 0 1\nB /d xfs nofail 0 2\n");
  EXPECT_EQ(ds::test::ReadFileOrDie(t / "etc/fstab.diskseal.bak"), "UUID=root / ext4 defaults 0 1\n");
  // No crypttab yet: created, and its backup records that it was empty.
  ASSERT_TRUE(ApplyEtcEdit(*PosixEnv(), root, "crypttab", [](std::string_view t2) {
                return SetCrypttabLine(t2, "u", std::string("u UUID=u /k luks,nofail,header=/h"));
              }).ok());
  EXPECT_EQ(ds::test::ReadFileOrDie(t / "etc/crypttab"), "u UUID=u /k luks,nofail,header=/h\n");
  EXPECT_EQ(ds::test::ReadFileOrDie(t / "etc/crypttab.diskseal.bak"), "");
}

TEST(ConfigTest, LvmRejectFilterBlockComesAndGoesLeavingTheRest) {
  const std::string local = "local {\n\t# system_id = \"x\"\n}\n";
  const std::string with = WithLvmRejectFilter(local, {"/dev/disk/by-partuuid/0a1b-02", "/dev/vda2", "/dev/bad|x"});
  EXPECT_EQ(with.substr(0, local.size()), local);
  EXPECT_NE(with.find("global_filter = [ \"r|^/dev/disk/by-partuuid/0a1b-02$|\", \"r|^/dev/vda2$|\" ]"), std::string::npos)
      << with;
  EXPECT_EQ(with.find("bad"), std::string::npos);  // a path that cannot be written as a pattern is left out
  EXPECT_EQ(with.find("a|"), std::string::npos);    // reject patterns only
  EXPECT_EQ(WithLvmRejectFilter(with, {"/dev/disk/by-partuuid/0a1b-02", "/dev/vda2"}),
            WithLvmRejectFilter(local, {"/dev/disk/by-partuuid/0a1b-02", "/dev/vda2"}));  // replaced, not added
  EXPECT_EQ(WithoutLvmRejectFilter(with), local);
  EXPECT_EQ(WithoutLvmRejectFilter(local), local);
  EXPECT_NE(WithLvmRejectFilter("", {"/dev/sda.1"}).find("r|^/dev/sda[.]1$|"), std::string::npos);
}

TEST(ConfigTest, LvmFilterProblemNamesTheSettingThatIsInTheWay) {
  const std::string debian = "devices {\n\t# global_filter = [ \"a|.*|\" ]\n\t# use_devicesfile = 0\n}\n";
  EXPECT_EQ(LvmFilterProblem(debian, "local {\n}\n"), "");
  EXPECT_EQ(LvmFilterProblem(debian, WithLvmRejectFilter("", {"/dev/vda2"})), "");  // diskseal's own block
  EXPECT_NE(LvmFilterProblem("devices {\n  global_filter=[ \"r|sdb|\" ]\n}\n", "").find("lvm.conf sets devices/global_filter"),
            std::string::npos);
  EXPECT_NE(LvmFilterProblem(debian, "devices { \n use_devicesfile = 1 # RHEL 9\n}\n").find("lvmlocal.conf sets devices/use_devicesfile = 1"),
            std::string::npos);
  EXPECT_EQ(LvmFilterProblem("devices {\n\tuse_devicesfile = 0\n}\n", ""), "");
}

TEST(ConfigTest, EscapesRoundTrip) {
  const std::string s = "a b\tc\\d\ne";
  EXPECT_EQ(EscapeField(s), "a\\040b\\011c\\134d\\012e");
  EXPECT_EQ(UnescapeField(EscapeField(s)), s);
  EXPECT_EQ(UnescapeField("\\04"), "\\04");  // a truncated escape stays as written
}

}  // namespace
}  // namespace ds::machine
