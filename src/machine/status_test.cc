// status on captured machines: ADE's words from the discovered volumes and enable's records, with
// no process running (after a crash) and with the machine lock held by one.
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "machine/state.h"
#include "machine/status.h"
#include "machine/test_tree.h"

namespace ds::machine {
namespace {

class StatusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    t.Block("sda", {.devno = "8:0"});
    t.Device("sda", test::Ext4Image(0x01, "root"));
    t.Block("sdb", {.devno = "8:16"});
    t.Device("sdb", test::XfsImage(0x02, "data"));
    t.Block("sdc", {.devno = "8:32"});
    t.Device("sdc", test::Ext4Image(0x03, "logs"));
    t.Mount("8:0", "/", "ext4", "/dev/sda");
    t.Mount("8:16", "/data", "xfs", "/dev/sdb");
    t.Mount("8:32", "/logs", "ext4", "/dev/sdc");
    ASSERT_TRUE(state.Prepare().ok());
  }
  VolumeRecord Record(const std::string& name, const std::string& dev, const std::string& mp, Step step) {
    VolumeRecord r;
    r.name = name;
    r.device = dev;
    r.mountpoint = mp;
    r.fstype = "xfs";
    r.header = state.HeaderPath(name);
    r.key_file = state.KeyPath(name);
    r.step = step;
    return r;
  }
  MachineStatus Get() {
    auto s = GetStatus(*PosixEnv(), t.Root(), state.dir());
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(s).value() : MachineStatus{};
  }
  static const VolumeStatus& At(const MachineStatus& s, const std::string& mp) {
    for (const auto& v : s.volumes)
      if (v.mountpoint == mp) return v;
    static VolumeStatus none;
    ADD_FAILURE() << "no volume at " << mp;
    return none;
  }

  test::MachineTree t;
  ds::test::TempDir dir;
  StateDir state{*PosixEnv(), dir / "state"};
};

TEST_F(StatusTest, NothingEncrypted) {
  MachineStatus s = Get();
  EXPECT_EQ(s.os_volume, "NotEncrypted");
  EXPECT_EQ(s.data_volumes, "NotEncrypted");
  EXPECT_EQ(s.progress_message, "Data volumes are not encrypted");
  EXPECT_EQ(At(s, "/data").state, "NotEncrypted");
  EXPECT_EQ(At(s, "/logs").state, "NotEncrypted");
  EXPECT_EQ(s.volumes.size(), 2u);  // / is the OS volume, not a data row
}

TEST_F(StatusTest, InterruptedEncryptionAfterACrash) {
  VolumeRecord r = Record("11111111-0000-4000-8000-000000000001", "/dev/sdb", "/data", Step::kEncrypting);
  r.rate = Rate{999999, 3u << 20, 8u << 20, 120, 2, 1700000000};  // its writer is gone
  ASSERT_TRUE(state.Save(r).ok());
  MachineStatus s = Get();
  EXPECT_EQ(s.data_volumes, "EncryptionInProgress");
  const VolumeStatus& v = At(s, "/data");
  EXPECT_EQ(v.state, "EncryptionInProgress");
  EXPECT_EQ(v.step, "encrypting");
  EXPECT_EQ(v.percent, 37.5);  // captured tree: from the record, the header is not this machine's
  EXPECT_FALSE(v.mib_s.has_value());  // nobody holds the lock: no live rate
  EXPECT_EQ(s.running, "");
  EXPECT_EQ(s.progress_message,
            "Encrypting data volume 1/1 interrupted at 37%: run `diskseal enable` to resume");
  EXPECT_EQ(At(s, "/logs").state, "NotEncrypted");
}

TEST_F(StatusTest, RunningEncryptionShowsRateAndAdesMessage) {
  VolumeRecord a = Record("11111111-0000-4000-8000-000000000001", "/dev/sdb", "/data", Step::kConfigured);
  VolumeRecord b = Record("11111111-0000-4000-8000-000000000002", "/dev/sdc", "/logs", Step::kEncrypting);
  b.rate = Rate{int64_t(::getpid()), 1u << 20, 4u << 20, 99.5, 3, 1700000000};
  ASSERT_TRUE(state.Save(a).ok());
  ASSERT_TRUE(state.Save(b).ok());
  auto lock = MachineLock::Acquire(state.LockPath(), "diskseal enable --volume-type Data", false, nullptr);
  ASSERT_TRUE(lock.ok());
  MachineStatus s = Get();
  EXPECT_EQ(At(s, "/data").state, "Encrypted");  // /data is mounted (from whatever now)
  const VolumeStatus& v = At(s, "/logs");
  ASSERT_TRUE(v.mib_s.has_value());
  EXPECT_EQ(*v.mib_s, 99.5);
  EXPECT_EQ(*v.eta_s, 3);
  EXPECT_EQ(s.running, "pid " + std::to_string(::getpid()) + " (diskseal enable --volume-type Data)");
  EXPECT_EQ(s.progress_message, "Encrypting data volume 2/2: 25%");
  auto j = nlohmann::json::parse(StatusToJson(s));
  EXPECT_EQ(j["DataVolumesEncrypted"], "EncryptionInProgress");
  EXPECT_EQ(j["volumes"][1]["mib_s"], 99.5);
  EXPECT_NE(StatusToText(s).find("ProgressMessage            : Encrypting data volume 2/2: 25%"),
            std::string::npos);
}

TEST_F(StatusTest, AllEncryptedThenOneNotMounted) {
  ASSERT_TRUE(state.Save(Record("11111111-0000-4000-8000-000000000001", "/dev/sdb", "/data", Step::kConfigured)).ok());
  ASSERT_TRUE(state.Save(Record("11111111-0000-4000-8000-000000000002", "/dev/sdc", "/logs", Step::kConfigured)).ok());
  MachineStatus s = Get();
  EXPECT_EQ(s.data_volumes, "Encrypted");
  EXPECT_EQ(s.progress_message, "Encryption succeeded for data volumes");
  ASSERT_TRUE(state.Save(Record("11111111-0000-4000-8000-000000000003", "/dev/sdd", "/gone", Step::kConfigured)).ok());
  s = Get();
  EXPECT_EQ(At(s, "/gone").state, "NotMounted");
  EXPECT_EQ(s.data_volumes, "NotMounted");
}

TEST_F(StatusTest, DecryptionInProgressAndDone) {
  VolumeRecord r = Record("11111111-0000-4000-8000-000000000001", "/dev/sdb", "/data", Step::kDecrypting);
  r.rate = Rate{0, 6u << 20, 8u << 20, 0, 0, 0};
  ASSERT_TRUE(state.Save(r).ok());
  MachineStatus s = Get();
  EXPECT_EQ(s.data_volumes, "DecryptionInProgress");
  EXPECT_EQ(At(s, "/data").percent, 75.0);
  r.step = Step::kDisabled;
  ASSERT_TRUE(state.Save(r).ok());
  s = Get();
  EXPECT_EQ(At(s, "/data").state, "NotEncrypted");
  EXPECT_EQ(s.progress_message, "Decryption succeeded");
}

// Issue 10: a closed LUKS device diskseal does not manage is no data volume of this status: it
// does not turn the managed (encrypted, mounted) ones into "not mounted".
TEST_F(StatusTest, AForeignClosedLuksDeviceDoesNotChangeTheMachineStatus) {
  t.Block("sdd", {.devno = "8:48"});
  t.Device("sdd", test::Luks2Image("22222222-0000-4000-8000-000000000009"));
  ASSERT_TRUE(state.Save(Record("11111111-0000-4000-8000-000000000001", "/dev/sdb", "/data", Step::kConfigured)).ok());
  ASSERT_TRUE(state.Save(Record("11111111-0000-4000-8000-000000000002", "/dev/sdc", "/logs", Step::kConfigured)).ok());
  MachineStatus s = Get();
  EXPECT_EQ(s.data_volumes, "Encrypted");
  EXPECT_EQ(s.progress_message, "Encryption succeeded for data volumes");
  for (const auto& v : s.volumes) EXPECT_NE(v.device, "/dev/sdd");
}

// Issue 10: enable --only one of two volumes: status describes the volume diskseal manages
// (encrypted), and lists the other as it is.
TEST_F(StatusTest, OneOfTwoVolumesEnabledIsEncryptedNotNotEncrypted) {
  ASSERT_TRUE(state.Save(Record("11111111-0000-4000-8000-000000000001", "/dev/sdb", "/data", Step::kConfigured)).ok());
  MachineStatus s = Get();
  EXPECT_EQ(s.data_volumes, "Encrypted");
  EXPECT_EQ(s.progress_message, "Encryption succeeded for data volumes");
  EXPECT_EQ(At(s, "/data").state, "Encrypted");
  EXPECT_EQ(At(s, "/logs").state, "NotEncrypted");
}

// Issue 10: "Decryption succeeded" only while it is true: once the volume disable decrypted is no
// longer mounted from its own device (re-encrypted by hand, unmounted, replaced), it is not said.
TEST_F(StatusTest, DecryptionSucceededDoesNotLinger) {
  ASSERT_TRUE(state.Save(Record("11111111-0000-4000-8000-000000000001", "/dev/sdb", "/data", Step::kDisabled)).ok());
  EXPECT_EQ(Get().progress_message, "Decryption succeeded");
  VolumeRecord moved = Record("11111111-0000-4000-8000-000000000001", "/dev/sdb", "/data", Step::kDisabled);
  moved.device = "/dev/sdx";  // /data is mounted from something else now
  ASSERT_TRUE(state.Save(moved).ok());
  MachineStatus s = Get();
  EXPECT_EQ(s.progress_message, "Data volumes are not encrypted");
  // and a later enable of another volume is what status says
  ASSERT_TRUE(state.Save(Record("11111111-0000-4000-8000-000000000002", "/dev/sdc", "/logs", Step::kConfigured)).ok());
  EXPECT_EQ(Get().progress_message, "Encryption succeeded for data volumes");
}

// Issue 10: a two-volume disable numbers its volumes 1/2 and 2/2 as its log does, also once the
// first is finished (a record past its run still counts).
TEST_F(StatusTest, TwoVolumeDisableNumbersEachVolumeOfTheRun) {
  VolumeRecord a = Record("11111111-0000-4000-8000-000000000001", "/dev/sdb", "/data", Step::kDecrypting);
  VolumeRecord b = Record("11111111-0000-4000-8000-000000000002", "/dev/sdc", "/logs", Step::kConfigured);
  a.run_index = 1, a.run_size = 2, b.run_index = 2, b.run_size = 2;
  a.rate = Rate{0, 2u << 20, 8u << 20, 0, 0, 0};
  ASSERT_TRUE(state.Save(a).ok());
  ASSERT_TRUE(state.Save(b).ok());
  EXPECT_EQ(Get().progress_message, "Decrypting data volume 1/2 interrupted at 25%: run `diskseal disable --volume-type Data` to resume");
  a.step = Step::kDisabled;
  b.step = Step::kDecrypting;
  b.rate = Rate{0, 4u << 20, 8u << 20, 0, 0, 0};
  ASSERT_TRUE(state.Save(a).ok());
  ASSERT_TRUE(state.Save(b).ok());
  EXPECT_EQ(Get().progress_message, "Decrypting data volume 2/2 interrupted at 50%: run `diskseal disable --volume-type Data` to resume");
  // the record keeps its place in the run across a save and a reload
  auto list = state.List();
  ASSERT_TRUE(list.ok());
  for (const auto& r : *list) EXPECT_EQ(r.run_size, 2) << r.mountpoint;
}

}  // namespace
}  // namespace ds::machine

namespace ds::machine {
namespace {

// The OS volume's record (enable --volume-type OS): ADE's OsVolumeEncrypted sequence, apart
// from the data volumes' words.
TEST_F(StatusTest, OsVolumeGoesThroughVmRestartPending) {
  VolumeRecord r = Record("osencrypt", "/dev/sda", "/", Step::kEscrowed);
  r.os = true;
  r.uuid = "11111111-0000-4000-8000-0000000000aa";
  r.fstype = "ext4";
  ASSERT_TRUE(state.Save(r).ok());
  auto lock = MachineLock::Acquire(state.LockPath(), "diskseal enable --volume-type OS", false, nullptr);
  ASSERT_TRUE(lock.ok());
  MachineStatus s = Get();
  EXPECT_EQ(s.os_volume, "EncryptionInProgress");  // the key is escrowed; root is still plaintext
  EXPECT_EQ(s.data_volumes, "NotEncrypted");      // the OS volume is not a data volume
  EXPECT_EQ(s.progress_message, "Encrypting the OS volume: 0%");
  ASSERT_FALSE(s.volumes.empty());
  EXPECT_EQ(s.volumes.front().mountpoint, "/");
  EXPECT_EQ(s.volumes.front().state, "EncryptionInProgress");

  // The header is in place, / is still mounted from the plain device: the reboot is due.
  r.step = Step::kHeaderPlaced;
  ASSERT_TRUE(state.Save(r).ok());
  s = Get();
  EXPECT_EQ(s.os_volume, "VMRestartPending");
  EXPECT_EQ(s.progress_message, "VMRestartPending: restart the machine to continue encrypting the OS volume");
  auto j = nlohmann::json::parse(StatusToJson(s));
  EXPECT_EQ(j["OsVolumeEncrypted"], "VMRestartPending");
  EXPECT_EQ(j["volumes"][0]["state"], "VMRestartPending");

  r.step = Step::kConfigured;
  ASSERT_TRUE(state.Save(r).ok());
  s = Get();
  EXPECT_EQ(s.os_volume, "Encrypted");
  EXPECT_EQ(s.progress_message, "Encryption succeeded for the OS volume");
  EXPECT_EQ(s.volumes.front().percent, 100);
  EXPECT_EQ(s.data_volumes, "NotEncrypted");
}

// The OS volume's record as enable writes it, its header (absent) in `dir`.
VolumeRecord OsRecord(const StateDir& state, const ds::test::TempDir& dir, const std::string& device, Step step) {
  VolumeRecord r;
  r.os = true;
  r.name = "osencrypt";
  r.uuid = "11111111-0000-4000-8000-0000000000aa";
  r.device = device;
  r.mountpoint = "/";
  r.fstype = "ext4";
  r.header = dir / "no-such-header";
  r.key_file = state.KeyPath(r.uuid);
  r.step = step;
  return r;
}

TEST(StatusOsTest, RootOnTheMappingIsEncryptionInProgressNotRestartPending) {
  test::MachineTree t;
  t.Block("sda", {.devno = "8:0"});
  t.Device("sda", test::Ext4Image(0x01, "root"));
  t.Mount("254:0", "/", "ext4", "/dev/mapper/osencrypt");
  ds::test::TempDir dir;
  StateDir state{*PosixEnv(), dir / "state"};
  ASSERT_TRUE(state.Prepare().ok());
  ASSERT_TRUE(state.Save(OsRecord(state, dir, "/dev/sda", Step::kEncrypting)).ok());
  auto s = GetStatus(*PosixEnv(), t.Root(), state.dir());
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->os_volume, "EncryptionInProgress");
  // Nobody holds the lock: the run was interrupted, and says how to carry on.
  EXPECT_EQ(s->progress_message,
            "Encrypting the OS volume interrupted at 0%: run `diskseal enable --volume-type OS` to resume");
}

// Root on diskseal's prepared linear mapping (named osencrypt too): no encryption and no restart
// due until enable placed a header and did not switch the mapping; a run that switched it is
// encrypting.
TEST(StatusOsTest, PreparedLinearMappingIsNotARestartPending) {
  test::MachineTree t;
  t.Block("vda2", {.devno = "254:2", .partition = true, .holders = {"dm-0"}});
  t.Device("vda2", test::Ext4Image(0x01, "root"));
  t.Block("dm-0", {.devno = "253:0", .slaves = {"vda2"}, .dm_name = "osencrypt",
                   .dm_uuid = "DISKSEAL-LINEAR-01020304-0506-0708-090a-0b0c0d0e0f10-osencrypt"});
  t.Device("dm-0", test::Ext4Image(0x01, "root"));
  t.Mount("253:0", "/", "ext4", "/dev/mapper/osencrypt");
  ds::test::TempDir dir;
  StateDir state{*PosixEnv(), dir / "state"};
  ASSERT_TRUE(state.Prepare().ok());
  auto s = GetStatus(*PosixEnv(), t.Root(), state.dir());
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->os_volume, "NotEncrypted");

  // Header placed and no run: the mapping was not switched (refused, or cut short).
  VolumeRecord r = OsRecord(state, dir, "/dev/vda2", Step::kHeaderPlaced);
  ASSERT_TRUE(state.Save(r).ok());
  s = GetStatus(*PosixEnv(), t.Root(), state.dir());
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->os_volume, "VMRestartPending");
  r.step = Step::kEncrypting;  // switched: the run is under way (or stopped)
  ASSERT_TRUE(state.Save(r).ok());
  s = GetStatus(*PosixEnv(), t.Root(), state.dir());
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->os_volume, "EncryptionInProgress");
}

}  // namespace
}  // namespace ds::machine
