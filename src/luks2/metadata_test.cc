#include "luks2/metadata.h"

#include <gtest/gtest.h>

#include <functional>
#include <random>

#include "crypto/crypto.h"
#include "io/mem_device.h"
#include "luks2/binary_header.h"
#include "luks2/format.h"
#include "luks2/test_util.h"
#include "testlib.h"

namespace ds::luks2 {
namespace {

class ValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string path = dir_ / "img";
    test::WriteFile(path, std::string(20u << 20, '\0'));
    auto v = Volume::Format(*PosixEnv(), path, "", test::FastFormat(), AsBytes("pass"));
    ASSERT_TRUE(v.ok()) << v.status().message();
    std::string s = test::ReadFileOrDie(path);
    image_ = Bytes(s.begin(), s.end());
    MemDevice d("img", image_);
    auto r = ReadHeader(d);
    ASSERT_TRUE(r.ok());
    md_ = r->md;
  }

  // Applies `edit` to the JSON, rewrites both copies with valid checksums, reads back.
  Status ReadMutated(const std::function<void(Json&)>& edit, uint64_t* ops = nullptr) {
    Metadata md = md_;
    edit(md.json);
    MemDevice w("img", image_);
    Status s = test::WriteRaw(w, md);
    if (!s.ok()) return s;
    FaultDevice d("img", w.Snapshot());
    auto r = ReadHeader(d);
    if (ops) *ops = d.ops();
    return r.ok() ? Status::Ok() : r.status();
  }

  test::TempDir dir_;
  Bytes image_;
  Metadata md_;
};

TEST_F(ValidationTest, FormattedHeaderIsValid) {
  EXPECT_TRUE(Validate(md_).ok());
  EXPECT_TRUE(ReadMutated([](Json&) {}).ok());
}

struct Mutation {
  const char* name;
  std::function<void(Json&)> edit;
  const char* expect;  // substring of the error
};

TEST_F(ValidationTest, EveryRuleGivesAClearErrorAndNoWrite) {
  const std::vector<Mutation> cases = {
      {"key_size as string", [](Json& j) { j["keyslots"]["0"]["key_size"] = "64"; }, "key_size"},
      {"area inside metadata", [](Json& j) { j["keyslots"]["0"]["area"]["offset"] = "4096"; }, "inside the metadata"},
      {"overlapping areas",
       [](Json& j) {
         j["keyslots"]["1"] = j["keyslots"]["0"];
         j["digests"]["0"]["keyslots"].push_back("1");
       },
       "overlaps keyslot 0"},
      {"area past keyslots area", [](Json& j) { j["keyslots"]["0"]["area"]["size"] = "18446744073709551615"; }, "runs past"},
      {"dangling digest keyslot", [](Json& j) { j["digests"]["0"]["keyslots"] = {"0", "5"}; }, "keyslot 5, which does not exist"},
      {"dangling digest segment", [](Json& j) { j["digests"]["0"]["segments"] = {"0", "9"}; }, "segment 9, which does not exist"},
      {"dangling token keyslot", [](Json& j) { j["tokens"]["0"] = {{"type", "x"}, {"keyslots", {"3"}}}; }, "keyslot 3, which does not exist"},
      {"token without type", [](Json& j) { j["tokens"]["0"] = {{"keyslots", Json::array()}}; }, "\"type\""},
      {"bad sector size", [](Json& j) { j["segments"]["0"]["sector_size"] = 1000; }, "sector_size"},
      {"sector size as string", [](Json& j) { j["segments"]["0"]["sector_size"] = "512"; }, "sector_size"},
      {"misaligned offset", [](Json& j) { j["segments"]["0"]["offset"] = "16777217"; }, "multiples of 512"},
      {"negative offset", [](Json& j) { j["segments"]["0"]["offset"] = "-512"; }, "u64"},
      {"offset as number", [](Json& j) { j["segments"]["0"]["offset"] = 16777216; }, "offset"},
      {"u64 overflow", [](Json& j) { j["segments"]["0"]["offset"] = "99999999999999999999999"; }, "u64"},
      {"data inside keyslots", [](Json& j) { j["segments"]["0"]["offset"] = "65536"; }, "overlaps the metadata"},
      {"zero size", [](Json& j) { j["segments"]["0"]["size"] = "0"; }, "positive"},
      {"no segments", [](Json& j) { j["segments"] = Json::object(); j["digests"]["0"]["segments"] = Json::array(); }, "at least one segment"},
      {"segment gap", [](Json& j) { j["segments"]["1"] = j["segments"]["0"]; j["segments"].erase("0"); j["digests"]["0"]["segments"] = {"1"}; }, "without gaps"},
      {"crypt without digest", [](Json& j) { j["digests"]["0"]["segments"] = Json::array(); }, "referenced by a digest"},
      {"json_size mismatch", [](Json& j) { j["config"]["json_size"] = "4096"; }, "json_size"},
      {"keyslots_size unaligned", [](Json& j) { j["config"]["keyslots_size"] = "1000"; }, "4096-aligned"},
      {"keyslots_size too big", [](Json& j) { j["config"]["keyslots_size"] = "1073741824"; }, "128 MiB"},
      {"no config", [](Json& j) { j.erase("config"); }, "config"},
      {"keyslots is array", [](Json& j) { j["keyslots"] = Json::array(); }, "keyslots"},
      {"non-numeric key", [](Json& j) { j["keyslots"]["a"] = j["keyslots"]["0"]; }, "decimal"},
      {"id out of range", [](Json& j) { j["segments"]["40"] = j["segments"]["0"]; j["digests"]["0"]["segments"].push_back("40"); }, "out of range"},
      {"empty segment cipher", [](Json& j) { j["segments"]["0"]["encryption"] = ""; }, "\"encryption\" must not be empty"},
      {"empty keyslot type", [](Json& j) { j["keyslots"]["0"]["type"] = ""; }, "\"type\" must not be empty"},
      {"keyslots_size zero", [](Json& j) { j["config"]["keyslots_size"] = "0"; }, "positive"},
      {"kdf without iterations", [](Json& j) { j["keyslots"]["0"]["kdf"].erase("iterations"); }, "kdf.iterations"},
      {"kdf iterations as float", [](Json& j) { j["keyslots"]["0"]["kdf"]["iterations"] = 1000.5; }, "iterations"},
      {"kdf salt not a string", [](Json& j) { j["keyslots"]["0"]["kdf"]["salt"] = 7; }, "kdf.salt"},
      {"af stripes as string", [](Json& j) { j["keyslots"]["0"]["af"]["stripes"] = "4000"; }, "af.stripes"},
      {"af type", [](Json& j) { j["keyslots"]["0"]["af"]["type"] = "luks9"; }, "af.type"},
      {"area without encryption", [](Json& j) { j["keyslots"]["0"]["area"].erase("encryption"); }, "area.encryption"},
      {"too many digests",
       [](Json& j) {
         for (int i = 1; i <= 8; ++i) {
           Json d = j["digests"]["0"];
           d["keyslots"] = Json::array();
           d["segments"] = Json::array();
           j["digests"][std::to_string(i)] = d;
         }
       },
       "at most 8"},
      {"keyslot in two digests",
       [](Json& j) {
         Json d = j["digests"]["0"];
         d["segments"] = Json::array();
         j["digests"]["1"] = d;
       },
       "more than one digest"},
      {"luks2 keyslot without digest", [](Json& j) { j["digests"]["0"]["keyslots"] = Json::array(); }, "has no digest"},
      {"requirements not strings", [](Json& j) { j["config"]["requirements"] = {{"mandatory", {5}}}; }, "mandatory"},
      {"flags not array", [](Json& j) { j["config"]["flags"] = "x"; }, "flags"},
      {"top level array", [](Json& j) { j = Json::array({1, 2}); }, "start with '{'"},
      {"top level string", [](Json& j) { j = "luks"; }, "start with '{'"},
      {"reencrypt slot bad mode",
       [](Json& j) {
         j["keyslots"]["1"] = {{"type", "reencrypt"}, {"key_size", 1}, {"mode", "sideways"},
                               {"direction", "forward"},
                               {"area", {{"type", "none"}, {"offset", "290816"}, {"size", "4096"}}}};
       },
       "mode"},
      {"type of type", [](Json& j) { j["keyslots"]["0"]["type"] = 2; }, "type"},
      {"area type wrong type", [](Json& j) { j["keyslots"]["0"]["area"]["type"] = 7; }, "area.type"},
  };
  for (const auto& c : cases) {
    uint64_t ops = 99;
    Status s = ReadMutated(c.edit, &ops);
    ASSERT_FALSE(s.ok()) << c.name;
    EXPECT_EQ(s.code(), Code::kCorrupt) << c.name << ": " << s.message();
    EXPECT_NE(s.message().find(c.expect), std::string::npos) << c.name << ": " << s.message();
    EXPECT_EQ(ops, 0u) << c.name;
  }
}

// A keyslot diskseal cannot use does not make the header unreadable (cryptsetup loads these too):
// it is read, marked unusable with the reason, and the header's other keyslots stay usable.
TEST_F(ValidationTest, KeyslotDisksealCannotUseIsKeptAndMarked) {
  const std::vector<Mutation> cases = {
      {"kdf spelled argon2", [](Json& j) { j["keyslots"]["0"]["kdf"]["type"] = "argon2"; }, "kdf type 'argon2' is not supported"},
      {"kdf unknown type", [](Json& j) { j["keyslots"]["0"]["kdf"]["type"] = "scrypt"; }, "not supported"},
      {"kdf zero iterations", [](Json& j) { j["keyslots"]["0"]["kdf"]["iterations"] = 0; }, "iterations"},
      {"kdf salt not base64", [](Json& j) { j["keyslots"]["0"]["kdf"]["salt"] = "!!!"; }, "salt"},
      {"kdf unknown hash", [](Json& j) { j["keyslots"]["0"]["kdf"]["hash"] = "md99"; }, "kdf.hash"},
      {"af stripes", [](Json& j) { j["keyslots"]["0"]["af"]["stripes"] = 3999; }, "4000"},
      {"area too small", [](Json& j) { j["keyslots"]["0"]["area"]["size"] = "4096"; }, "smaller than"},
      {"huge key", [](Json& j) { j["keyslots"]["0"]["key_size"] = 100000; }, "key_size"},
  };
  for (const auto& c : cases) {
    Metadata md = md_;
    c.edit(md.json);
    ASSERT_TRUE(Validate(md).ok()) << c.name << ": " << Validate(md).message();
    auto ks = FindKeyslot(md, 0);
    ASSERT_TRUE(ks.has_value());
    EXPECT_NE(ks->unusable.find(c.expect), std::string::npos) << c.name << ": " << ks->unusable;
    EXPECT_TRUE(ReadMutated(c.edit).ok()) << c.name;
  }
  // Leftovers of the other KDF (and other extra fields) are ignored, as cryptsetup ignores them:
  // the slot stays usable.
  for (const char* f : {"time", "memory", "cpus", "extra"}) {
    Metadata md = md_;
    md.json["keyslots"]["0"]["kdf"][f] = 4;
    ASSERT_TRUE(Validate(md).ok()) << f;
    EXPECT_EQ(FindKeyslot(md, 0)->unusable, "") << f;
    EXPECT_EQ(FindKeyslot(md, 0)->kdf.iterations, md_.json["keyslots"]["0"]["kdf"]["iterations"].get<uint32_t>());
  }
  EXPECT_EQ(FindKeyslot(md_, 0)->unusable, "");
  // A digest diskseal cannot verify with also loads (cryptsetup does not check its fields).
  for (const auto& [field, value] : std::vector<std::pair<const char*, Json>>{
           {"salt", "%%%"}, {"hash", "md99"}, {"digest", ""}, {"iterations", -1}}) {
    Metadata md = md_;
    md.json["digests"]["0"][field] = value;
    ASSERT_TRUE(Validate(md).ok()) << field;
    EXPECT_NE(Digests(md)[0].unusable.find("digest 0"), std::string::npos) << field;
  }
  EXPECT_EQ(Digests(md_)[0].unusable, "");
}

TEST_F(ValidationTest, JsonAreaFraming) {
  auto with_area = [&](const std::string& text) {
    // Builds both copies around raw JSON area bytes with a correct checksum.
    Bytes img = image_;
    for (bool secondary : {false, true}) {
      BinaryHeader h;
      h.secondary = secondary;
      h.hdr_size = md_.hdr_size;
      h.seqid = 5;
      h.uuid = md_.uuid;
      h.hdr_offset = secondary ? md_.hdr_size : 0;
      Bytes area(md_.hdr_size - 4096, 0);
      std::memcpy(area.data(), text.data(), std::min(text.size(), area.size()));
      auto cs = ComputeChecksum(h, area);
      std::memcpy(h.csum.data(), cs->data(), cs->size());
      Bytes bin = EncodeBinaryHeader(h);
      std::memcpy(img.data() + h.hdr_offset, bin.data(), bin.size());
      std::memcpy(img.data() + h.hdr_offset + 4096, area.data(), area.size());
    }
    MemDevice d("img", img);
    auto r = ReadHeader(d);
    return r.ok() ? Status::Ok() : r.status();
  };
  std::string good = SerializeJson(md_.json);
  EXPECT_TRUE(with_area(good).ok());
  EXPECT_NE(with_area(" " + good).message().find("start with '{'"), std::string::npos);
  EXPECT_NE(with_area(good + " x").message().find("not valid JSON"), std::string::npos);
  std::string trailing = good + std::string(1, '\0') + "junk";
  EXPECT_NE(with_area(trailing).message().find("non-zero bytes after"), std::string::npos);
  EXPECT_NE(with_area(std::string(md_.hdr_size, '{')).message().find("no terminating NUL"), std::string::npos);
  EXPECT_FALSE(with_area("{\"keyslots\":").ok());
  EXPECT_FALSE(with_area(std::string(10000, '[') + std::string(10000, ']')).ok());  // deep nesting
  EXPECT_FALSE(with_area("{\"a\":\"\xff\xfe\"}").ok());  // invalid UTF-8
}

// Random damage to the JSON (structure-aware) and raw bytes, checksums fixed so the fuzz reaches
// the parser and validator: no input may crash, hang or write.
TEST_F(ValidationTest, FuzzedHeadersNeverCrash) {
  std::mt19937_64 rng(20261123);
  const std::string base = SerializeJson(md_.json);
  int accepted = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string text = base;
    int edits = 1 + int(rng() % 4);
    for (int e = 0; e < edits && !text.empty(); ++e) {
      size_t pos = rng() % text.size();
      switch (rng() % 5) {
        case 0: text[pos] = char(rng() % 256); break;
        case 1: text.erase(pos, 1 + rng() % 8); break;
        case 2: text.insert(pos, 1, "{}[]\",:0123456789-e."[rng() % 20]); break;
        case 3: {  // replace a number run with an extreme value
          static const char* vals[] = {"0", "-1", "4294967296", "18446744073709551616", "1e308", "\"x\"", "null", "[]"};
          text.insert(pos, vals[rng() % 8]);
          break;
        }
        default: text = text.substr(0, pos); break;
      }
    }
    Metadata md = md_;
    // Only the two metadata copies matter to the parser; a small image keeps the loop fast.
    Bytes img(image_.begin(), image_.begin() + long(2 * md.hdr_size));
    for (bool secondary : {false, true}) {
      BinaryHeader h;
      h.secondary = secondary;
      h.hdr_size = md.hdr_size;
      h.seqid = 3;
      h.uuid = md.uuid;
      h.hdr_offset = secondary ? md.hdr_size : 0;
      Bytes area(md.hdr_size - 4096, 0);
      std::memcpy(area.data(), text.data(), std::min(text.size(), area.size() - 1));
      auto cs = ComputeChecksum(h, area);
      std::memcpy(h.csum.data(), cs->data(), cs->size());
      Bytes bin = EncodeBinaryHeader(h);
      std::memcpy(img.data() + h.hdr_offset, bin.data(), bin.size());
      std::memcpy(img.data() + h.hdr_offset + 4096, area.data(), area.size());
    }
    FaultDevice d("fuzz", img);
    auto r = ReadHeader(d);
    ASSERT_EQ(d.ops(), 0u);
    if (r.ok()) {
      ++accepted;
      // Whatever validates must be usable by every consumer without surprises.
      (void)Keyslots(r->md);
      (void)Segments(r->md);
      (void)Digests(r->md);
      (void)Tokens(r->md);
    } else {
      EXPECT_FALSE(r.status().message().empty());
    }
  }
  // Some mutations (whitespace-like, inside salts) keep the header valid; most must not.
  EXPECT_LT(accepted, 3000);
}

}  // namespace
}  // namespace ds::luks2
