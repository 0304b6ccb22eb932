#include "luks2/header_io.h"

#include <gtest/gtest.h>

#include <cstring>
#include <functional>

#include "crypto/crypto.h"
#include "io/mem_device.h"
#include "luks2/binary_header.h"
#include "luks2/format.h"
#include "luks2/test_util.h"
#include "testlib.h"

namespace ds::luks2 {
namespace {

// A formatted volume image in memory (formatted through the real code path on a temp file).
class HeaderIoTest : public ::testing::Test {
 protected:
  void SetUp() override { image_ = Make(test::FastFormat()); }

  Bytes Make(FormatOptions o, uint64_t size = 20u << 20) {
    std::string path = dir_ / ("img" + std::to_string(n_++));
    test::WriteFile(path, std::string(size, '\0'));
    test::WriteFile(dir_ / "k", "pass");
    auto v = Volume::Format(*PosixEnv(), path, "", o, AsBytes("pass"));
    EXPECT_TRUE(v.ok()) << v.status().message();
    std::string s = test::ReadFileOrDie(path);
    return Bytes(s.begin(), s.end());
  }

  Metadata Read(const Bytes& img) {
    MemDevice d("img", img);
    auto r = ReadHeader(d);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? r->md : Metadata{};
  }

  test::TempDir dir_;
  int n_ = 0;
  Bytes image_;
};

TEST_F(HeaderIoTest, BothCopiesValidAfterFormat) {
  MemDevice d("img", image_);
  auto r = ReadHeader(d);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->primary.valid);
  EXPECT_TRUE(r->secondary.valid);
  EXPECT_FALSE(r->needs_repair());
  EXPECT_EQ(r->secondary.offset, 16384u);
  EXPECT_EQ(r->md.seqid, 1u);
}

TEST_F(HeaderIoTest, WriteIncrementsSeqidAndKeepsUnknownFields) {
  MemDevice d("img", image_);
  Metadata md = Read(image_);
  md.json["config"]["flags"] = {"allow-discards"};
  md.json["tokens"]["3"] = {{"type", "vendor"}, {"keyslots", Json::array()}, {"x", {1, 2.5, "é"}}};
  ASSERT_TRUE(WriteHeader(d, md).ok());
  EXPECT_EQ(md.seqid, 2u);
  auto r = ReadHeader(d);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->md.seqid, 2u);
  EXPECT_EQ(SerializeJson(r->md.json["tokens"]["3"]), SerializeJson(md.json["tokens"]["3"]));
}

TEST_F(HeaderIoTest, DamagedCopyIsReportedAndTheOtherUsed) {
  for (uint64_t off : {uint64_t(0), uint64_t(16384)}) {
    Bytes img = image_;
    img[off + 5000] ^= 0xff;  // inside the JSON area: checksum breaks
    MemDevice d("img", img);
    auto r = ReadHeader(d);
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(r->needs_repair());
    EXPECT_EQ(r->from_secondary, off == 0);
    const CopyStatus& bad = off == 0 ? r->primary : r->secondary;
    EXPECT_FALSE(bad.valid);
    EXPECT_NE(bad.error.find("checksum"), std::string::npos) << bad.error;
  }
}

TEST_F(HeaderIoTest, BothDamagedIsAClearError) {
  Bytes img = image_;
  img[5000] ^= 1;
  img[16384 + 5000] ^= 1;
  MemDevice d("img", img);
  auto r = ReadHeader(d);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCorrupt);
  EXPECT_NE(r.status().message().find("primary copy at 0: checksum mismatch"), std::string::npos);
  EXPECT_NE(r.status().message().find("secondary copy at 16384"), std::string::npos);
}

TEST_F(HeaderIoTest, NotLuksAtAll) {
  MemDevice d("zeros", 1 << 20);
  auto r = ReadHeader(d);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not a LUKS2 device"), std::string::npos);
}

TEST_F(HeaderIoTest, HigherSeqidWins) {
  MemDevice d("img", image_);
  Metadata md = Read(image_);
  md.seqid = 9;
  md.label = "newer";
  ASSERT_TRUE(WriteCopy(d, md, true).ok());  // only the secondary moves ahead
  auto r = ReadHeader(d);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->md.label, "newer");
  EXPECT_TRUE(r->from_secondary);
  EXPECT_TRUE(r->needs_repair());
}

TEST_F(HeaderIoTest, AllNineSecondaryOffsetsAreTriedWhenPrimaryIsGone) {
  for (uint64_t size : kMetadataSizes) {
    FormatOptions o = test::FastFormat();
    o.metadata_size = size;
    Bytes img = Make(o, 48u << 20);
    std::memset(img.data(), 0, 4096);  // primary binary header wiped
    MemDevice d("img", img);
    auto r = ReadHeader(d);
    ASSERT_TRUE(r.ok()) << size << ": " << r.status().message();
    EXPECT_TRUE(r->from_secondary);
    EXPECT_EQ(r->secondary.offset, size);
    EXPECT_EQ(r->md.hdr_size, size);
  }
}

TEST_F(HeaderIoTest, TruncatedAtEvery512ByteBoundaryNeverCrashesNorWrites) {
  for (size_t n = 0; n <= 2 * 16384 + 4096; n += 512) {
    FaultDevice d("trunc", Bytes(image_.begin(), image_.begin() + long(n)));
    auto r = ReadHeader(d);
    if (n < 16384) {
      ASSERT_FALSE(r.ok()) << n;
      EXPECT_EQ(r.status().code(), Code::kCorrupt) << n;
    } else if (n < 32768) {
      ASSERT_TRUE(r.ok()) << n;  // primary intact, secondary cut off
      EXPECT_TRUE(r->needs_repair()) << n;
      EXPECT_FALSE(r->secondary.valid);
    } else {
      ASSERT_TRUE(r.ok()) << n;
      EXPECT_FALSE(r->needs_repair()) << n;
    }
    EXPECT_EQ(d.ops(), 0u) << "reading wrote to the device at length " << n;
  }
}

TEST_F(HeaderIoTest, EveryBinaryFieldDamagedInOneCopyFallsBackToTheOther) {
  // offsets of one byte inside each field of the binary header
  const size_t fields[] = {kOffMagic, kOffVersion + 1, kOffHdrSize + 7, kOffSeqid + 7, kOffLabel,
                           kOffCsumAlg, kOffSalt + 3, kOffUuid + 2, kOffSubsystem, kOffHdrOffset + 7,
                           kOffCsum + 1, 300, 1000, 4095};
  for (size_t f : fields) {
    for (uint64_t copy : {uint64_t(0), uint64_t(16384)}) {
      Bytes img = image_;
      img[copy + f] ^= 0x41;
      FaultDevice d("img", img);
      auto r = ReadHeader(d);
      ASSERT_TRUE(r.ok()) << "field at " << f << " copy " << copy << ": " << r.status().message();
      EXPECT_TRUE(r->needs_repair()) << f;
      EXPECT_EQ(d.ops(), 0u);
      img[(copy ? 0 : 16384) + f] ^= 0x41;  // now both copies are damaged
      FaultDevice d2("img", img);
      auto r2 = ReadHeader(d2);
      ASSERT_FALSE(r2.ok()) << f;
      EXPECT_EQ(d2.ops(), 0u);
    }
  }
}

TEST_F(HeaderIoTest, ConcurrentUpdateIsRefused) {
  MemDevice d("img", image_);
  Metadata a = Read(image_), b = Read(image_);
  a.label = "first";
  ASSERT_TRUE(WriteHeader(d, a).ok());
  b.label = "second";
  Status s = WriteHeader(d, b);
  EXPECT_EQ(s.code(), Code::kBusy) << s.message();
  auto r = ReadHeader(d);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->md.label, "first");
}

TEST_F(HeaderIoTest, InvalidMetadataIsNeverWritten) {
  FaultDevice d("img", image_);
  Metadata md = Read(image_);
  md.json["segments"]["0"]["sector_size"] = 1000;
  EXPECT_EQ(WriteHeader(d, md).code(), Code::kCorrupt);
  EXPECT_EQ(d.ops(), 0u);
}

// A power cut at any instant of a header commit leaves the old or the new header, never neither.
TEST_F(HeaderIoTest, CrashAtEveryInstantOfACommitLeavesOldOrNew) {
  Metadata md = Read(image_);
  md.label = "new";
  uint64_t total;
  {
    FaultDevice probe("img", image_);
    Metadata m = md;
    ASSERT_TRUE(WriteHeader(probe, m).ok());
    total = probe.ops();
  }
  for (uint64_t k = 1; k <= total; ++k) {
    for (auto mode : {FaultDevice::CutMode::kDropUnsynced, FaultDevice::CutMode::kKeepSome,
                      FaultDevice::CutMode::kTearOne}) {
      for (uint64_t seed = 0; seed < 4; ++seed) {
        FaultDevice d("img", image_);
        d.CrashAfterOps(k);
        Metadata m = md;
        (void)WriteHeader(d, m);
        Bytes after = d.PowerCut(mode, seed * 31 + k);
        MemDevice m2("after", after);
        auto r = ReadHeader(m2);
        ASSERT_TRUE(r.ok()) << "op " << k << ": " << r.status().message();
        EXPECT_TRUE(r->md.label == "new" || r->md.label.empty()) << r->md.label;
        EXPECT_EQ(r->md.label == "new", r->md.seqid == 2u);
      }
    }
  }
}

// After a crash tore one copy (or left it a commit behind), the next commit must still never pass
// through an instant with no valid copy, nor fall back further than the newest durable state.
TEST_F(HeaderIoTest, CrashDuringTheCommitAfterATornCopyLeavesNewestOrNext) {
  Metadata md = Read(image_);
  for (bool torn_secondary : {true, false}) {
    SCOPED_TRACE(torn_secondary ? "secondary torn" : "secondary a commit behind");
    Bytes start = image_;
    uint64_t newest = md.seqid;
    {
      MemDevice d("img", start);
      Metadata m = md;
      m.label = "one";
      ASSERT_TRUE(WriteHeader(d, m).ok());
      newest = m.seqid;
      start = d.Snapshot();
    }
    if (torn_secondary) {
      start[md.hdr_size + 4096 + 10] ^= 0xff;  // the secondary's JSON no longer matches its checksum
    } else {
      Bytes before = image_;  // the secondary as it was one commit earlier
      std::copy(before.begin() + md.hdr_size, before.begin() + 2 * md.hdr_size, start.begin() + md.hdr_size);
    }
    Metadata now = Read(start);
    ASSERT_EQ(now.seqid, newest);
    now.label = "two";
    uint64_t total;
    {
      FaultDevice probe("img", start);
      Metadata m = now;
      ASSERT_TRUE(WriteHeader(probe, m).ok());
      total = probe.ops();
    }
    for (uint64_t k = 1; k <= total; ++k) {
      for (auto mode : {FaultDevice::CutMode::kDropUnsynced, FaultDevice::CutMode::kKeepSome,
                        FaultDevice::CutMode::kTearOne}) {
        FaultDevice d("img", start);
        d.CrashAfterOps(k);
        Metadata m = now;
        (void)WriteHeader(d, m);
        MemDevice m2("after", d.PowerCut(mode, k * 7));
        auto r = ReadHeader(m2);
        ASSERT_TRUE(r.ok()) << "op " << k << ": " << r.status().message();
        EXPECT_TRUE((r->md.label == "one" && r->md.seqid == newest) ||
                    (r->md.label == "two" && r->md.seqid == newest + 1))
            << "op " << k << ": " << r->md.label << " seqid " << r->md.seqid;
      }
    }
  }
}

}  // namespace
}  // namespace ds::luks2
