// cryptsetup (Debian's, run for real) is the oracle: what diskseal writes it must read and open,
// what it writes diskseal must read, unlock, dump with the same values and export to the same
// bytes. Offline data checks use cryptsetup's offline reencryption, which works on image files
// without device-mapper.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "testlib.h"

namespace ds::test {
namespace {

using Json = nlohmann::json;

struct Case {
  int key_bits;
  int sector;
  std::string pbkdf;
  std::string md_size;  // --luks2-metadata-size
  bool detached;
  std::string Name() const {
    return std::to_string(key_bits) + "b/" + std::to_string(sector) + "/" + pbkdf + "/" + md_size +
           (detached ? "/detached" : "/attached");
  }
};

// Every value of every dimension appears at least twice, in different company.
const std::vector<Case> kMatrix = {
    {512, 512, "argon2id", "16k", false},  {256, 4096, "pbkdf2", "16k", false},
    {512, 4096, "argon2i", "64k", false},  {256, 512, "argon2id", "256k", false},
    {512, 512, "pbkdf2", "4m", false},     {512, 4096, "argon2id", "16k", true},
    {256, 512, "pbkdf2", "32k", true},     {512, 512, "argon2i", "1m", true},
    {256, 4096, "argon2id", "2m", true},   {512, 4096, "pbkdf2", "512k", true},
};

std::vector<std::string> Pbkdf(const std::string& p) {
  if (p == "pbkdf2") return {"--pbkdf", p, "--pbkdf-force-iterations", "1000"};
  return {"--pbkdf", p, "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32", "--pbkdf-parallel", "1"};
}

std::vector<std::string> FormatArgs(const Case& c) {
  std::vector<std::string> a = {"--key-size", std::to_string(c.key_bits), "--sector-size",
                                std::to_string(c.sector), "--luks2-metadata-size", c.md_size};
  for (auto& x : Pbkdf(c.pbkdf)) a.push_back(x);
  return a;
}

class InteropTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveProgram("cryptsetup")) GTEST_SKIP() << "cryptsetup-bin is not installed (scripts/setup installs it)";
    WriteFile(dir_ / "key", "correct horse battery staple");
    WriteFile(dir_ / "key2", "second passphrase");
    WriteFile(dir_ / "bad", "wrong");
  }
  // Runs cryptsetup, failing the test on a non-zero exit.
  RunResult Cs(std::vector<std::string> args) {
    args.insert(args.begin(), "cryptsetup");
    RunResult r = RunProgram(args);
    EXPECT_EQ(r.exit_code, 0) << "cryptsetup " << args[1] << ": " << r.err;
    return r;
  }
  RunResult Ds(const std::vector<std::string>& args) {
    RunResult r = Diskseal(args);
    EXPECT_EQ(r.exit_code, 0) << "diskseal " << args[0] << ": " << r.err;
    return r;
  }
  std::vector<std::string> Hdr(const Case& c) {
    return c.detached ? std::vector<std::string>{"--header", dir_ / "hdr"} : std::vector<std::string>{};
  }
  static std::vector<std::string> Cat(std::vector<std::string> a, const std::vector<std::string>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  }
  TempDir dir_;
};

const char* kForeignToken =
    R"({"type":"systemd-tpm2","keyslots":["0"],"tpm2-blob":"AAAA","tpm2-pcrs":[7],"tpm2-pcr-bank":"sha256","tpm2-primary-alg":"ecc","tpm2-policy-hash":"00ff","tpm2-pin":false})";

TEST_F(InteropTest, WhatDisksealWritesCryptsetupReads) {
  for (const Case& c : kMatrix) {
    SCOPED_TRACE(c.Name());
    const std::string img = dir_ / "img";
    std::remove((dir_ / "hdr").c_str());
    Bytes plain = MakeRandomImage(img, 20u << 20, uint64_t(c.key_bits + c.sector));
    Ds(Cat(Cat({"format", img, "-d", dir_ / "key", "--label", "lbl"}, Hdr(c)), FormatArgs(c)));

    // cryptsetup's view of the metadata
    Json j = Json::parse(Cs(Cat({"luksDump", "--dump-json-metadata", img}, Hdr(c))).out);
    EXPECT_EQ(j["segments"]["0"]["sector_size"], c.sector);
    EXPECT_EQ(j["segments"]["0"]["encryption"], "aes-xts-plain64");
    EXPECT_EQ(j["segments"]["0"]["offset"], c.detached ? "0" : "16777216");
    EXPECT_EQ(j["keyslots"]["0"]["key_size"], c.key_bits / 8);
    EXPECT_EQ(j["keyslots"]["0"]["kdf"]["type"], c.pbkdf);
    EXPECT_EQ(j["config"]["json_size"].get<std::string>(),
              std::to_string(*ParseSize(c.md_size) - 4096));
    EXPECT_NE(Cs(Cat({"luksDump", img}, Hdr(c))).out.find("lbl"), std::string::npos);

    // cryptsetup unlocks it, and rejects a wrong key
    Cs(Cat({"open", "--test-passphrase", "--key-file", dir_ / "key", img}, Hdr(c)));
    EXPECT_EQ(RunProgram(Cat({"cryptsetup", "open", "--test-passphrase", "--key-file", dir_ / "bad", img}, Hdr(c))).exit_code, 2);

    // a second keyslot and a foreign token written by diskseal
    Ds(Cat(Cat({"keyslot", "add", img, "-d", dir_ / "key", "--new-key-file", dir_ / "key2"}, Hdr(c)), Pbkdf(c.pbkdf)));
    Cs(Cat({"open", "--test-passphrase", "--key-slot", "1", "--key-file", dir_ / "key2", img}, Hdr(c)));
    WriteFile(dir_ / "token.json", kForeignToken);
    Ds(Cat({"token", "import", img, "--json-file", dir_ / "token.json"}, Hdr(c)));
    EXPECT_EQ(Json::parse(Cs(Cat({"token", "export", "--token-id", "0", img}, Hdr(c))).out),
              Json::parse(kForeignToken));

    // data: with a detached header at offset 0 cryptsetup can decrypt offline
    if (c.detached) {
      WriteFile(dir_ / "plainsrc", std::string(plain.begin(), plain.end()));
      Ds(Cat({"import", img, "-d", dir_ / "key", "--input", dir_ / "plainsrc"}, Hdr(c)));
      EXPECT_NE(Sha256File(img), Sha256File(dir_ / "plainsrc"));
      Cs(Cat({"reencrypt", "--decrypt", "--force-offline-reencrypt", "-q", "--key-file", dir_ / "key", img}, Hdr(c)));
      EXPECT_EQ(Sha256File(img), Sha256File(dir_ / "plainsrc"));
    }
  }
}

TEST_F(InteropTest, WhatCryptsetupWritesDisksealReads) {
  for (const Case& c : kMatrix) {
    SCOPED_TRACE(c.Name());
    const std::string img = dir_ / "img";
    std::remove((dir_ / "hdr").c_str());
    MakeRandomImage(img, 20u << 20, 7);
    Cs(Cat(Cat({"luksFormat", "-q", "--type", "luks2", "--key-file", dir_ / "key", "--label", "cslabel", img}, Hdr(c)), FormatArgs(c)));
    Json cs = Json::parse(Cs(Cat({"luksDump", "--dump-json-metadata", img}, Hdr(c))).out);
    Json ds = Json::parse(Ds(Cat({"dump", "--json", img}, Hdr(c))).out);
    EXPECT_EQ(ds["label"], "cslabel");
    EXPECT_EQ(ds["metadata_size"], *ParseSize(c.md_size));
    EXPECT_EQ(std::to_string(ds["keyslots_size"].get<uint64_t>()), cs["config"]["keyslots_size"]);
    EXPECT_EQ(ds["header_copies"]["primary"]["status"], "ok");
    EXPECT_EQ(ds["header_copies"]["secondary"]["status"], "ok");
    const Json& seg = ds["segments"][0];
    EXPECT_EQ(std::to_string(seg["offset"].get<uint64_t>()), cs["segments"]["0"]["offset"]);
    EXPECT_EQ(seg["sector_size"], cs["segments"]["0"]["sector_size"]);
    EXPECT_EQ(seg["cipher"], cs["segments"]["0"]["encryption"]);
    const Json& ks = ds["keyslots"][0];
    EXPECT_EQ(ks["key_size"], cs["keyslots"]["0"]["key_size"]);
    EXPECT_EQ(ks["kdf"]["type"], cs["keyslots"]["0"]["kdf"]["type"]);
    if (c.pbkdf == "pbkdf2") {
      EXPECT_EQ(ks["kdf"]["iterations"], cs["keyslots"]["0"]["kdf"]["iterations"]);
    } else {
      EXPECT_EQ(ks["kdf"]["memory"], cs["keyslots"]["0"]["kdf"]["memory"]);
      EXPECT_EQ(ks["kdf"]["time"], cs["keyslots"]["0"]["kdf"]["time"]);
    }
    EXPECT_EQ(ks["area"]["offset"], std::stoull(cs["keyslots"]["0"]["area"]["offset"].get<std::string>()));
    EXPECT_EQ(ds["digests"][0]["iterations"], cs["digests"]["0"]["iterations"]);

    Json tk = Json::parse(Ds(Cat({"test-key", "--json", img, "-d", dir_ / "key"}, Hdr(c))).out);
    EXPECT_EQ(tk["keyslot"], 0);
    EXPECT_EQ(Diskseal(Cat({"test-key", img, "-d", dir_ / "bad"}, Hdr(c))).exit_code, 2);

    Cs(Cat(Cat({"luksAddKey", "-q", "--key-file", dir_ / "key", img, dir_ / "key2"}, Hdr(c)), Pbkdf(c.pbkdf)));
    Json tk2 = Json::parse(Ds(Cat({"test-key", "--json", img, "-d", dir_ / "key2"}, Hdr(c))).out);
    EXPECT_EQ(tk2["keyslot"], 1);
    WriteFile(dir_ / "token.json", kForeignToken);
    Cs(Cat({"token", "import", "--json-file", dir_ / "token.json", img}, Hdr(c)));
    EXPECT_EQ(Json::parse(Ds(Cat({"token", "export", img, "--token-id", "0"}, Hdr(c))).out), Json::parse(kForeignToken));
    // diskseal edits of a cryptsetup header stay readable by cryptsetup
    Ds(Cat({"keyslot", "remove", img, "1"}, Hdr(c)));
    Cs(Cat({"luksDump", img}, Hdr(c)));
    EXPECT_NE(RunProgram(Cat({"cryptsetup", "open", "--test-passphrase", "--key-file", dir_ / "key2", img}, Hdr(c))).exit_code, 0);
  }
}

TEST_F(InteropTest, CryptsetupEncryptedDataExportsToTheSameBytes) {
  // detached header, data in place at offset 0
  {
    const std::string img = dir_ / "d.img";
    Bytes plain = MakeRandomImage(img, 24u << 20, 11);
    Cs(Cat({"reencrypt", "--encrypt", "--type", "luks2", "--header", dir_ / "d.hdr", "--key-file",
            dir_ / "key", "--force-offline-reencrypt", "-q", img}, Pbkdf("argon2id")));
    EXPECT_NE(Sha256File(img), "");
    Ds({"export", img, "--header", dir_ / "d.hdr", "-d", dir_ / "key", "-o", dir_ / "d.out"});
    EXPECT_EQ(ReadFileOrDie(dir_ / "d.out"), std::string(plain.begin(), plain.end()));
  }
  // attached header: cryptsetup shifts the data behind a 16 MiB header
  {
    const std::string img = dir_ / "a.img";
    Bytes plain = RandomData(24u << 20, 12);
    std::string content(plain.begin(), plain.end());
    content.resize(56u << 20, '\0');  // the last 32 MiB are free for the shift
    WriteFile(img, content);
    Cs(Cat({"reencrypt", "--encrypt", "--type", "luks2", "--reduce-device-size", "32M", "--key-file",
            dir_ / "key", "--force-offline-reencrypt", "-q", img}, Pbkdf("pbkdf2")));
    Ds({"export", img, "-d", dir_ / "key", "-o", dir_ / "a.out"});
    std::string out = ReadFileOrDie(dir_ / "a.out");
    EXPECT_EQ(out.size(), 40u << 20);
    EXPECT_EQ(out.substr(0, plain.size()), std::string(plain.begin(), plain.end()));
  }
}

TEST_F(InteropTest, KeyFileOffsetAndSizeMeanWhatTheyMeanForCryptsetup) {
  const std::string img = dir_ / "k.img";
  MakeRandomImage(img, 20u << 20, 3);
  Bytes kf = RandomData(4096, 99);
  WriteFile(dir_ / "bigkey", std::string(kf.begin(), kf.end()));
  Cs(Cat({"luksFormat", "-q", "--type", "luks2", "--key-file", dir_ / "bigkey", "--keyfile-offset",
          "100", "--keyfile-size", "64", img}, Pbkdf("pbkdf2")));
  Ds({"test-key", img, "-d", dir_ / "bigkey", "--keyfile-offset", "100", "--keyfile-size", "64"});
  EXPECT_EQ(Diskseal({"test-key", img, "-d", dir_ / "bigkey", "--keyfile-offset", "101", "--keyfile-size", "64"}).exit_code, 2);
  EXPECT_EQ(Diskseal({"test-key", img, "-d", dir_ / "bigkey"}).exit_code, 2);
}

}  // namespace
}  // namespace ds::test
