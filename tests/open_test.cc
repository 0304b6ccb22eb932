// `diskseal open --userspace` / `close` / `list` end to end on the host (no device-mapper here):
// an ext4 filesystem goes into a volume, is mounted through the served file and a loop device,
// survives close and reopen; and every kind of bad input gets its exit code and a clear message.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "io/mem_device.h"
#include "luks2/volume.h"
#include "testlib.h"

namespace ds::test {
namespace {

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

class OpenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::geteuid(), 0u) << "mounts FUSE and loop devices: run as root";
    WriteFile(dir_ / "pw", "open sesame");
    WriteFile(dir_ / "bad", "open barley");
    ::mkdir(mnt_.c_str(), 0700);
  }
  void TearDown() override {
    test::Run({"umount", mnt_});
    auto r = Diskseal({"list", "--json", "--run-dir", run_});
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    if (j.is_array())
      for (auto& e : j) Diskseal({"close", "--run-dir", run_, e["name"].get<std::string>()});
  }

  void Format(const std::string& img, const std::string& size) {
    test::Run({"truncate", "-s", size, img});
    RunResult r = Diskseal({"format", "-q", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
                            "1000", "--key-file", dir_ / "pw", img});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  RunResult Open(const std::string& img, const std::string& name,
                 const std::string& key = "pw", const std::string& header = "") {
    std::vector<std::string> a = {"open", "--userspace", "--json", "--run-dir", run_, "--key-file", dir_ / key,
                                  img, name};
    if (!header.empty()) a.insert(a.end(), {"--header", header});
    return Diskseal(a);
  }
  RunResult Close(const std::string& name) {
    return Diskseal({"close", "--run-dir", run_, name});
  }
  std::string Losetup(const std::string& file) {
    RunResult r = test::Run({"losetup", "-f", "--show", file});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return Trim(r.out);
  }
  void Mount(const std::string& name) {
    std::string loop = Losetup(run_ + "/" + name);
    RunResult r = test::Run({"mount", loop, mnt_});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  std::string Sums(const std::vector<std::string>& files) {
    std::vector<std::string> argv = {"sh", "-c", "cd " + mnt_ + " && sha256sum"};
    for (const auto& f : files) argv[2] += " " + f;
    return test::Run(argv).out;
  }

  TempDir dir_;
  std::string run_ = dir_ / "run", mnt_ = dir_ / "mnt";
};

// The host end-to-end story: a filesystem with files is encrypted in place (detached header),
// opened in userspace, mounted through losetup, verified, extended, closed, reopened and verified
// again.
TEST_F(OpenTest, Ext4EndToEndThroughTheUserspaceView) {
  const std::string vol = dir_ / "vol.img", hdr = dir_ / "vol.hdr";
  test::Run({"truncate", "-s", "32M", vol});
  ASSERT_EQ(test::Run({"mkfs.ext4", "-q", vol}).exit_code, 0);
  ASSERT_EQ(test::Run({"mount", "-o", "loop", vol, mnt_}).exit_code, 0);
  MakeRandomImage(mnt_ + "/a.bin", 4 << 20, 1);
  WriteFile(mnt_ + "/b.txt", "the plaintext filesystem\n");
  const std::string sums = Sums({"a.bin", "b.txt"});
  ASSERT_EQ(test::Run({"umount", mnt_}).exit_code, 0);

  RunResult e = Diskseal({"encrypt", vol, "--header", hdr, "--key-file", dir_ / "pw", "--pbkdf", "pbkdf2",
                          "--pbkdf-force-iterations", "1000", "--hotzone-size", "4M"});
  ASSERT_EQ(e.exit_code, 0) << e.err;
  // The image holds ciphertext now: blkid no longer finds the ext4 superblock.
  EXPECT_NE(test::Run({"blkid", "-p", "-o", "value", "-s", "TYPE", vol}).out, "ext4\n");
  RunResult o = Open(vol, "e2e", "pw", hdr);
  ASSERT_EQ(o.exit_code, 0) << o.err;
  auto j = nlohmann::json::parse(o.out);
  EXPECT_EQ(j["mode"], "userspace");
  EXPECT_EQ(j["path"], run_ + "/e2e");
  EXPECT_EQ(std::filesystem::file_size(run_ + "/e2e"), 32u << 20);
  ASSERT_EQ(Close("e2e").exit_code, 0);

  std::string more_sum;
  for (int round = 0; round < 2; ++round) {
    RunResult r = Open(vol, "e2e", "pw", hdr);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    Mount("e2e");
    EXPECT_EQ(Sums({"a.bin", "b.txt"}), sums);
    if (round == 0) {
      MakeRandomImage(mnt_ + "/c.bin", 3 << 20, 2);
      more_sum = Sums({"c.bin"});
      EXPECT_FALSE(more_sum.empty());
    } else {
      EXPECT_EQ(Sums({"c.bin"}), more_sum);
    }
    RunResult busy = Close("e2e");  // mounted: refused, and nothing is lost
    EXPECT_EQ(busy.exit_code, 5) << busy.err;
    EXPECT_NE(busy.err.find("unmount it first"), std::string::npos) << busy.err;
    ASSERT_EQ(test::Run({"umount", mnt_}).exit_code, 0);
    RunResult c = Close("e2e");  // detaches the loop device too
    ASSERT_EQ(c.exit_code, 0) << c.err;
    EXPECT_FALSE(std::filesystem::exists(run_ + "/e2e"));
    if (round == 1) {
      // e2fsck through a fresh open: the filesystem is clean after all of it.
      ASSERT_EQ(Open(vol, "e2e", "pw", hdr).exit_code, 0);
      RunResult fsck = test::Run({"e2fsck", "-fn", run_ + "/e2e"});
      EXPECT_EQ(fsck.exit_code, 0) << fsck.out << fsck.err;
      ASSERT_EQ(Close("e2e").exit_code, 0);
    }
  }
  RunResult l = Diskseal({"list", "--run-dir", run_});
  EXPECT_EQ(l.out, "");
}

// A volume stopped in the middle of its encryption (SIGTERM: a commit point, part crypt, part
// still plaintext) opens in userspace and reads as the original bytes; writes through the view
// land on the right side of the boundary, and resuming afterwards keeps them.
TEST_F(OpenTest, HalfEncryptedVolumeReadsAsTheOriginal) {
  const std::string vol = dir_ / "half.img", hdr = dir_ / "half.hdr";
  Bytes plain = MakeRandomImage(vol, 16u << 20, 5);
  // --stop-after: a run that stops at the first commit point past 6 MiB (exit 9, resumable).
  RunResult e = Diskseal({"encrypt", vol, "--header", hdr, "--key-file", dir_ / "pw", "--pbkdf", "pbkdf2",
                          "--pbkdf-force-iterations", "1000", "--hotzone-size", "1M", "--stop-after", "6M"});
  ASSERT_EQ(e.exit_code, 9) << e.err;
  EXPECT_NE(e.err.find("stopped at a commit point after 6291456 of 16777216 bytes"), std::string::npos) << e.err;
  auto d = nlohmann::json::parse(Diskseal({"dump", "--json", vol, "--header", hdr}).out);
  ASSERT_EQ(d["requirements"], nlohmann::json::array({"online-reencrypt-v2"}));
  std::vector<std::string> kinds;  // the regular segments: the part done, then the part still plain
  for (auto& seg : d["segments"])
    if (seg["flags"].empty()) kinds.push_back(seg["type"]);
  EXPECT_EQ(kinds, (std::vector<std::string>{"crypt", "linear"}));
  RunResult o = Open(vol, "half", "pw", hdr);
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_EQ(ReadFileOrDie(run_ + "/half"), std::string(plain.begin(), plain.end()));
  // One write on each side of the boundary and one across the whole volume's middle.
  Bytes patch = RandomData(64 << 10, 6);
  for (uint64_t off : {uint64_t(0), uint64_t(8u << 20), uint64_t((16u << 20) - (64 << 10))}) {
    RunResult w = test::Run({"dd", "of=" + run_ + "/half", "bs=64k", "seek=" + std::to_string(off / (64 << 10)),
                             "conv=notrunc,fsync", "status=none"}, std::string(patch.begin(), patch.end()));
    ASSERT_EQ(w.exit_code, 0) << w.err;
    std::copy(patch.begin(), patch.end(), plain.begin() + off);
  }
  ASSERT_EQ(Close("half").exit_code, 0);
  RunResult r = Diskseal({"resume", vol, "--header", hdr, "--key-file", dir_ / "pw"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(Open(vol, "half", "pw", hdr).exit_code, 0);
  EXPECT_EQ(ReadFileOrDie(run_ + "/half"), std::string(plain.begin(), plain.end()));
  ASSERT_EQ(Close("half").exit_code, 0);
}

TEST_F(OpenTest, BadInput) {
  const std::string vol = dir_ / "vol.img", vol2 = dir_ / "vol2.img";
  Format(vol, "20M");
  Format(vol2, "20M");

  RunResult wrong = Open(vol, "x", "bad");
  EXPECT_EQ(wrong.exit_code, 2) << wrong.err;
  EXPECT_FALSE(std::filesystem::exists(run_ + "/x"));

  ASSERT_EQ(Open(vol, "x").exit_code, 0);
  RunResult same_name = Open(vol2, "x");
  EXPECT_EQ(same_name.exit_code, 5) << same_name.err;
  EXPECT_NE(same_name.err.find("name in use"), std::string::npos) << same_name.err;
  RunResult same_dev = Open(vol, "y");
  EXPECT_EQ(same_dev.exit_code, 5) << same_dev.err;
  EXPECT_NE(same_dev.err.find("already open as x"), std::string::npos) << same_dev.err;

  RunResult bad_name = Open(vol2, "../etc");
  EXPECT_EQ(bad_name.exit_code, 1) << bad_name.err;
  RunResult missing = Close("nothing");
  EXPECT_EQ(missing.exit_code, 4) << missing.err;
  RunResult not_luks = Diskseal({"open", "--userspace", "--run-dir", run_, "--key-file",
                                 dir_ / "pw", dir_ / "pw", "z"});
  EXPECT_EQ(not_luks.exit_code, 4) << not_luks.err;
  EXPECT_EQ(Close("x").exit_code, 0);
}

// kill -9 of the daemon: list says stale, opening the name again cleans up and works, and close
// of a stale mapping removes it.
TEST_F(OpenTest, CrashLeavesAStaleMappingThatIsCleanedUp) {
  const std::string vol = dir_ / "vol.img";
  Format(vol, "20M");
  RunResult o = Open(vol, "c");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  pid_t pid = pid_t(nlohmann::json::parse(o.out)["pid"].get<int64_t>());
  std::string loop = Losetup(run_ + "/c");
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  // Wait until the kernel has torn the process down (not a sleep: a condition on /proc).
  for (;;) {
    RunResult st = test::Run({"sh", "-c", "cat /proc/" + std::to_string(pid) +
                                              "/stat 2>/dev/null | cut -d' ' -f3"});
    if (Trim(st.out).empty() || Trim(st.out) == "Z") break;
  }
  RunResult l = Diskseal({"list", "--json", "--run-dir", run_});
  auto j = nlohmann::json::parse(l.out);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["state"], "stale");

  RunResult again = Open(vol, "c");  // cleans the stale mapping (and its loop device) first
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.err.find("stale"), std::string::npos) << again.err;
  ASSERT_EQ(Close("c").exit_code, 0);

  // Once more, this time cleaned by close.
  o = Open(vol, "c");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  pid = pid_t(nlohmann::json::parse(o.out)["pid"].get<int64_t>());
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  for (;;) {
    RunResult st = test::Run({"sh", "-c", "cat /proc/" + std::to_string(pid) +
                                              "/stat 2>/dev/null | cut -d' ' -f3"});
    if (Trim(st.out).empty() || Trim(st.out) == "Z") break;
  }
  RunResult c = Close("c");
  EXPECT_EQ(c.exit_code, 0) << c.err;
  EXPECT_NE(c.out.find("stale"), std::string::npos) << c.out;
  EXPECT_FALSE(std::filesystem::exists(run_ + "/c"));
  EXPECT_EQ(Diskseal({"list", "--run-dir", run_}).out, "");
}

// Without a usable /dev/fuse (hidden here in a private mount namespace), open says which package.
TEST_F(OpenTest, FuseMissingNamesThePackage) {
  const std::string vol = dir_ / "vol.img";
  Format(vol, "20M");
  RunResult r = test::Run(
      {"unshare", "-m", "--propagation", "private", "sh", "-c",
       "mount --bind /dev/null /dev/fuse && exec " + std::string(DISKSEAL_BIN) +
           " open --userspace --run-dir " + run_ + " --key-file " + dir_ / "pw" + " " + vol +
           " nofuse"});
  EXPECT_EQ(r.exit_code, 7) << r.err;
  EXPECT_NE(r.err.find("fuse3"), std::string::npos) << r.err;
}

// A header that records an interrupted hotzone (an EIO mid-zone left it flagged) on a read-only
// filesystem: open, which would write that header, refuses with one line naming the rule
// (exit 2) and changes nothing; with the filesystem writable the same open recovers the zone,
// and the volume finishes to the original bytes.
TEST_F(OpenTest, InterruptedHotzoneWithItsHeaderOnAReadOnlyFilesystemIsRefusedClearly) {
  const std::string img = dir_ / "hz.img", ro = dir_ / "ro", hdr = ro + "/hz.hdr";
  const Bytes plain = MakeRandomImage(img, 8u << 20, 31);
  ::mkdir(ro.c_str(), 0700);
  ASSERT_EQ(test::Run({"mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", ro}).exit_code, 0);
  struct Unmount {
    std::string dir;
    ~Unmount() { test::Run({"umount", "-l", dir}); }
  } unmount{ro};
  RunResult init = Diskseal({"encrypt", img, "--header", hdr, "--init-only", "--key-file", dir_ / "pw", "--pbkdf",
                             "pbkdf2", "--pbkdf-force-iterations", "1000"});
  ASSERT_EQ(init.exit_code, 0) << init.err;
  {
    // The engine on copies that fail one write in the middle of the data: the zone over it stays
    // flagged in the header, as after a crash.
    auto h = std::make_unique<FaultDevice>("hdr", [&] {
      std::string b = ReadFileOrDie(hdr);
      return Bytes(b.begin(), b.end());
    }());
    auto d = std::make_unique<FaultDevice>("data", [&] {
      std::string b = ReadFileOrDie(img);
      return Bytes(b.begin(), b.end());
    }());
    d->FailWriteAt(4u << 20, (4u << 20) + 1);
    FaultDevice *hp = h.get(), *dp = d.get();
    auto v = luks2::Volume::FromDevices("hz", std::move(h), std::move(d));
    ASSERT_TRUE(v.ok()) << v.status().message();
    auto u = v->Unlock(AsBytes("open sesame"));
    ASSERT_TRUE(u.ok()) << u.status().message();
    engine::EngineOptions eo;
    eo.hotzone_bytes = 2u << 20;
    EXPECT_EQ(engine::RunOperation(*v, {{u->digest, &u->key}}, eo).code(), Code::kIOError);
    const Bytes hb = hp->Current(), db = dp->Current();
    WriteFile(hdr, std::string(hb.begin(), hb.end()));
    WriteFile(img, std::string(db.begin(), db.end()));
  }
  ASSERT_NE(Diskseal({"dump", img, "--header", hdr}).out.find("in-reencryption"), std::string::npos);
  ASSERT_EQ(test::Run({"mount", "-o", "remount,ro", ro}).exit_code, 0);
  const std::string hdr_sum = Sha256File(hdr), img_sum = Sha256File(img);
  // Here (no device-mapper) the view is a userspace one, which writes its header whatever it finds;
  // a kernel open refuses only a header that records a hotzone (the OS test's boot).
  RunResult r = Open(img, "hz", "pw", hdr);
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find(img + ": " + hdr + " is on a read-only filesystem"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("remount it read-write"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(Sha256File(hdr), hdr_sum);
  EXPECT_EQ(Sha256File(img), img_sum);
  ASSERT_EQ(test::Run({"mount", "-o", "remount,rw", ro}).exit_code, 0);
  r = Open(img, "hz", "pw", hdr);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("recovered the hotzone"), std::string::npos) << r.err;
  ASSERT_EQ(Close("hz").exit_code, 0);
  ASSERT_EQ(Diskseal({"resume", img, "--header", hdr, "--key-file", dir_ / "pw"}).exit_code, 0);
  r = Diskseal({"decrypt", img, "--header", hdr, "--key-file", dir_ / "pw"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(Sha256File(img), Sha256File([&] {
              WriteFile(dir_ / "plain", std::string(plain.begin(), plain.end()));
              return dir_ / "plain";
            }()));
}

}  // namespace
}  // namespace ds::test
