// Differential test of header loading against cryptsetup (2.6.1, the Debian 12 package): valid
// headers that cryptsetup itself wrote (several keyslots and KDFs, tokens, attached and detached,
// a reencryption and a data-shift encryption in progress) are mutated -- JSON fields, types,
// values, sizes, object ids, one or both copies, binary-header strings -- with the checksums
// recomputed so that every mutation reaches the JSON rules. For each case diskseal's reader
// (in-process, what `diskseal dump` runs: Volume::Load and both renderings) and `cryptsetup
// luksDump` on the same image file must agree on "loads" or "refuses"; diskseal must never crash.
// Every disagreement must match an entry of kKnownDifferences (each with its reason, also listed
// in docs/luks2-format.md), so a new one fails the test.
//
// Environment: DISKSEAL_DIFF_CASES (default 2000), DISKSEAL_DIFF_SEED (default fixed; "random"
// for a new one, printed so a failure can be replayed), DISKSEAL_DIFF_ONLY=N (replay case N).
// A long run: DISKSEAL_DIFF_SEED=random DISKSEAL_DIFF_CASES=50000 build/luks2_test
//             --gtest_filter='CryptsetupDiff*'
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <sstream>

#include "luks2/dump.h"
#include "luks2/format.h"
#include "luks2/header_io.h"
#include "luks2/test_util.h"
#include "luks2/volume.h"
#include "testlib.h"

extern char** environ;

namespace ds::luks2 {
namespace {

// A disagreement both tools are known to have, and why diskseal keeps its side. `diskseal_refuses`
// says who is stricter; `match` is a substring of diskseal's error (when diskseal refuses) or of
// cryptsetup's --debug output (when cryptsetup refuses).
struct KnownDifference {
  bool diskseal_refuses;
  const char* match;
  const char* reason;
};

const KnownDifference kKnownDifferences[] = {
    {true, "sector_size must be a power of 2 from 512 to 4096",
     "cryptsetup loads any multiple of 512 but dm-crypt (and diskseal's userspace view) can only "
     "use 512, 1024, 2048 or 4096: no data could ever be read through such a segment"},
    {true, "is referenced by more than one digest",
     "a keyslot under two digests is ambiguous (which volume key does it hold?); cryptsetup takes "
     "the first digest it finds, diskseal refuses rather than guess"},
    {false, "Segment does not match neither backup final or backup previous segment",
     "the consistency of an in-place operation's segments is checked by engine::ReadState, which "
     "refuses the header before resume, open or status use it; dump still shows it"},
    {false, "Missing reencryption requirement flag",
     "as above: a reencrypt keyslot without its requirement is refused by engine::ReadState"},
    {false, "Missing reencryption keyslot",
     "as above: a reencryption requirement without its keyslot is refused by engine::ReadState"},
    {false, "Multiple online reencryption requirement flags detected",
     "engine::ReadState accepts either online-reencrypt-v2 or -v3 and writes back one; the extra "
     "flag hides nothing diskseal would misread"},
    {true, "is not a known resilience mode",
     "a reencrypt keyslot with a resilience mode diskseal does not know cannot be resumed or "
     "described; diskseal refuses the header rather than show an operation it cannot read "
     "(cryptsetup refuses it when it resumes)"},
};

struct Base {
  std::string name;
  std::string image;  // the file holding the header (the device, or the detached header file)
  std::string data;   // detached: the data device; empty when the header is attached
  Metadata md;        // as read: both copies valid
};

struct Case {
  int index = 0;
  const Base* base = nullptr;
  std::vector<std::string> log;  // what was done, for the failure message
  Metadata primary, secondary;
  bool encodable = true;
};

// ---- mutations -----------------------------------------------------------------------------------

const char* const kWords[] = {
    "pbkdf2", "argon2i", "argon2id", "argon2", "luks2", "reencrypt", "crypt", "linear", "raw",
    "checksum", "journal", "none", "datashift", "sha1", "sha256", "sha512", "whirlpool", "md5",
    "sha3-256", "aes-xts-plain64", "aes-cbc-essiv:sha256", "twofish-xts-plain64",
    "cipher_null-ecb", "aes", "", "luks1", "forward", "backward", "encrypt", "decrypt",
    "backup-previous", "backup-final", "backup-moved-segment", "in-reencryption",
    "allow-discards", "online-reencrypt-v2", "offline-reencrypt", "luks2-keyring", "clevis",
    "dynamic", "x"};
const char* const kDecimals[] = {"0", "1", "511", "512", "4096", "32768", "16384", "65536",
                                 "290816", "16777216", "18446744073709551615",
                                 "18446744073709551616", "-1", "", "0x200", " 512", "512 ",
                                 "1e3", "00512", "+512"};
const char* const kFields[] = {"flags", "priority", "integrity", "hash", "iterations", "time",
                               "memory", "cpus", "salt", "key_description", "requirements",
                               "mandatory", "extra", "encryption", "sector_size", "iv_tweak",
                               "key_size", "type", "stripes", "shift_size", "mode", "direction",
                               "offset", "size", "af", "kdf", "area", "keyslots", "segments"};

class Mutator {
 public:
  Mutator(std::mt19937_64& rng, std::vector<std::string>& log) : rng_(rng), log_(log) {}

  size_t Pick(size_t n) { return size_t(rng_() % n); }
  bool Chance(int percent) { return int(rng_() % 100) < percent; }

  Json RandomValue() {
    switch (Pick(10)) {
      case 0: case 1: return kWords[Pick(std::size(kWords))];
      case 2: case 3: return kDecimals[Pick(std::size(kDecimals))];
      case 4: case 5: return RandomInt();
      case 6: return 1.5;
      case 7: return Chance(50);
      case 8: return nullptr;
      default: {
        switch (Pick(4)) {
          case 0: return Json::array();
          case 1: return Json::object();
          case 2: return Json::array({"0"});
          default: return Json{{"type", "x"}};
        }
      }
    }
  }

  Json RandomInt(int64_t near = 0) {
    static const int64_t kInts[] = {0, 1, -1, 2, 511, 512, 513, 1000, 1024, 2048, 4096, 8192,
                                    3999, 4000, 4001, 32, 64, 128, 4294967295LL, 4294967296LL,
                                    9223372036854775807LL};
    switch (Pick(6)) {
      case 0: return near + 1;
      case 1: return near - 1;
      case 2: return near * 2;
      case 3: return uint64_t(18446744073709551615ULL);
      default: return kInts[Pick(std::size(kInts))];
    }
  }

  Json Tweak(const Json& v) {
    if (v.is_string()) {
      const std::string s = v.get<std::string>();
      auto n = ParseU64(s);
      if (n && Chance(70)) {
        switch (Pick(8)) {
          case 0: return std::to_string(*n + 512);
          case 1: return std::to_string(*n - 512);
          case 2: return std::to_string(*n + 1);
          case 3: return std::to_string(*n * 2);
          case 4: return std::to_string(*n / 2);
          case 5: return std::to_string(*n + 4096);
          default: return kDecimals[Pick(std::size(kDecimals))];
        }
      }
      switch (Pick(4)) {
        case 0: return s + "x";
        case 1: return std::string();
        default: return kWords[Pick(std::size(kWords))];
      }
    }
    if (v.is_number_integer()) return RandomInt(v.get<int64_t>());
    return RandomValue();
  }

  // Every node below the root, as JSON pointers.
  static void Collect(const Json& j, const Json::json_pointer& at, std::vector<Json::json_pointer>& out) {
    if (j.is_object()) {
      for (const auto& [k, v] : j.items()) {
        out.push_back(at / k);
        Collect(v, at / k, out);
      }
    } else if (j.is_array()) {
      for (size_t i = 0; i < j.size(); ++i) {
        out.push_back(at / i);
        Collect(j[i], at / i, out);
      }
    }
  }

  void Mutate(Json& doc) {
    if (Chance(15)) return SectionOp(doc);
    std::vector<Json::json_pointer> nodes;
    Collect(doc, Json::json_pointer(), nodes);
    if (nodes.empty()) return;
    const Json::json_pointer p = nodes[Pick(nodes.size())];
    Json& node = doc[p];
    const std::string where = p.to_string();
    switch (Pick(10)) {
      case 0: case 1: {  // delete
        Json& parent = doc[p.parent_pointer()];
        if (parent.is_object()) parent.erase(p.back());
        else parent.erase(size_t(std::stoul(p.back())));
        log_.push_back("delete " + where);
        return;
      }
      case 2: case 3: case 4: case 5: {
        node = Tweak(node);
        log_.push_back("set " + where + " = " + SerializeJson(node));
        return;
      }
      case 6: {
        node = RandomValue();
        log_.push_back("set " + where + " = " + SerializeJson(node));
        return;
      }
      default: {
        if (node.is_object()) {
          std::string f = kFields[Pick(std::size(kFields))];
          node[f] = RandomValue();
          log_.push_back("add " + where + "/" + f + " = " + SerializeJson(node[f]));
        } else if (node.is_array()) {
          Json v = Chance(50) && !node.empty() ? node[Pick(node.size())]
                                               : Json(std::to_string(Pick(12)));
          node.push_back(v);
          log_.push_back("append " + where + " " + SerializeJson(v));
        } else {
          node = Tweak(node);
          log_.push_back("set " + where + " = " + SerializeJson(node));
        }
        return;
      }
    }
  }

  // Operations on whole numbered entries: copy an entry to another id, renumber one, or use a
  // field of the other KDF (the documented disagreements are of this shape).
  void SectionOp(Json& doc) {
    static const char* const kSections[] = {"keyslots", "segments", "digests", "tokens"};
    const std::string sec = kSections[Pick(std::size(kSections))];
    if (!doc.is_object() || !doc.contains(sec) || !doc[sec].is_object() || doc[sec].empty()) return;
    Json& s = doc[sec];
    auto it = s.begin();
    std::advance(it, long(Pick(s.size())));
    const std::string from = it.key();
    const std::string to = std::to_string(Pick(34));
    switch (Pick(3)) {
      case 0:
        s[to] = s[from];
        log_.push_back("copy /" + sec + "/" + from + " to /" + sec + "/" + to);
        return;
      case 1: {
        Json v = s[from];
        s.erase(from);
        s[to] = v;
        log_.push_back("renumber /" + sec + "/" + from + " to /" + sec + "/" + to);
        return;
      }
      default: {
        if (sec != "keyslots" || !s[from].contains("kdf") || !s[from]["kdf"].is_object()) return;
        Json& kdf = s[from]["kdf"];
        if (StrOr(kdf, "type") == "pbkdf2") {
          const char* f[] = {"time", "memory", "cpus"};
          const char* name = f[Pick(3)];
          kdf[name] = 4;
          log_.push_back("add /keyslots/" + from + "/kdf/" + name + " = 4 (other kdf)");
        } else {
          const char* f[] = {"hash", "iterations"};
          const char* name = f[Pick(2)];
          kdf[name] = std::string(name) == "hash" ? Json("sha256") : Json(1000);
          log_.push_back("add /keyslots/" + from + "/kdf/" + name + " (other kdf)");
        }
        return;
      }
    }
  }

  void MutateBinary(Metadata& md) {
    switch (Pick(4)) {
      case 0: {
        static const char* const kAlgs[] = {"sha1", "sha512", "sha384", "sha256"};
        md.csum_alg = kAlgs[Pick(std::size(kAlgs))];
        log_.push_back("checksum_alg = " + md.csum_alg);
        return;
      }
      case 1:
        md.label = std::string(Pick(48), 'L');
        log_.push_back("label of " + std::to_string(md.label.size()) + " bytes");
        return;
      case 2:
        md.subsystem = Chance(50) ? "sub" : std::string(47, 'S');
        log_.push_back("subsystem = " + md.subsystem);
        return;
      default: {
        static const char* const kUuids[] = {"", "not-a-uuid", "12345678-1234-1234-1234-1234567890ab",
                                             "12345678-1234-1234-1234-1234567890AB"};
        md.uuid = kUuids[Pick(std::size(kUuids))];
        log_.push_back("uuid = '" + md.uuid + "'");
        return;
      }
    }
  }

 private:
  std::mt19937_64& rng_;
  std::vector<std::string>& log_;
};

Case MakeCase(const std::vector<Base>& bases, uint64_t seed, int index) {
  std::mt19937_64 rng(seed * 1000003u + uint64_t(index));
  Case c;
  c.index = index;
  c.base = &bases[size_t(rng() % bases.size())];
  Mutator m(rng, c.log);
  c.log.push_back("base " + c.base->name);
  Metadata md = c.base->md;
  const int edits = m.Chance(60) ? 1 : m.Chance(60) ? 2 : 3;
  const size_t mode = m.Pick(10);  // 0..6 both the same, 7 primary only, 8 secondary only, 9 each its own
  if (mode <= 6) {
    for (int e = 0; e < edits; ++e) m.Mutate(md.json);
    if (m.Chance(10)) m.MutateBinary(md);
    c.primary = c.secondary = md;
  } else if (mode <= 8) {
    Metadata bad = md;
    for (int e = 0; e < edits; ++e) m.Mutate(bad.json);
    if (m.Chance(40)) {
      ++bad.seqid;
      c.log.push_back("mutated copy's seqid + 1");
    }
    c.log.push_back(mode == 7 ? "primary copy only" : "secondary copy only");
    c.primary = mode == 7 ? bad : md;
    c.secondary = mode == 7 ? md : bad;
  } else {
    c.primary = c.secondary = md;
    c.log.push_back("primary:");
    for (int e = 0; e < edits; ++e) m.Mutate(c.primary.json);
    c.log.push_back("secondary:");
    for (int e = 0; e < edits; ++e) m.Mutate(c.secondary.json);
    if (m.Chance(50)) {
      ++c.secondary.seqid;
      c.log.push_back("secondary seqid + 1");
    }
  }
  return c;
}

// Writes both copies of the case over the first 2 * hdr_size bytes of `path`. False when the
// mutation cannot be encoded (JSON larger than its area, unknown checksum algorithm).
bool WriteCase(const Case& c, const std::string& path) {
  auto p = EncodeCopy(c.primary, false);
  auto s = EncodeCopy(c.secondary, true);
  if (!p.ok() || !s.ok()) return false;
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = pwrite(fd, p->data(), p->size(), 0) == ssize_t(p->size()) &&
            pwrite(fd, s->data(), s->size(), off_t(c.base->md.hdr_size)) == ssize_t(s->size());
  close(fd);
  return ok;
}

struct DisksealVerdict {
  bool loads = false;
  std::string why;
};

// What `diskseal dump` does: load the volume read-only, render it both ways.
DisksealVerdict Diskseal(const Base& b, const std::string& path, const std::string& data) {
  DisksealVerdict v;
  auto vol = data.empty() ? Volume::Load(*PosixEnv(), path, "", false)
                          : Volume::Load(*PosixEnv(), data, path, false);
  if (!vol.ok()) {
    v.why = vol.status().message();
    return v;
  }
  (void)b;
  (void)DumpText(vol->header_state());
  (void)DumpJson(vol->header_state()).dump();
  v.loads = true;
  return v;
}

pid_t SpawnLuksDump(const std::string& path) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  std::vector<std::string> argv = {"cryptsetup", "luksDump", path};
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = -1;
  if (posix_spawnp(&pid, "cryptsetup", &fa, nullptr, args.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  return pid;
}

int Wait(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

uint64_t EnvU64(const char* name, uint64_t def) {
  const char* v = std::getenv(name);
  if (!v || !*v) return def;
  auto n = ParseU64(v);
  return n ? *n : def;
}

class CryptsetupDiff : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::HaveProgram("cryptsetup")) GTEST_SKIP() << "cryptsetup is not installed";
    test::WriteFile(dir_ / "k1", "pass1");
    test::WriteFile(dir_ / "k2", "pass2");
    test::WriteFile(dir_ / "k3", "pass3");
    test::WriteFile(dir_ / "token.json",
                    R"({"type":"clevis","keyslots":["1"],"jwe":{"ciphertext":"x","protected":"y"}})");
    const std::vector<std::string> pbkdf2 = {"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"};
    auto cs = [&](std::vector<std::string> args, const std::vector<std::string>& extra = {}) {
      args.insert(args.begin(), "cryptsetup");
      args.insert(args.begin() + 2, "-q");
      args.insert(args.begin() + 3, extra.begin(), extra.end());
      auto r = test::RunProgram(args);
      ASSERT_EQ(r.exit_code, 0) << args[1] << ": " << r.err;
    };
    auto sparse = [&](const std::string& name, const char* size) {
      auto r = test::RunProgram({"truncate", "-s", size, dir_ / name});
      ASSERT_EQ(r.exit_code, 0) << r.err;
    };
    // Attached: pbkdf2 + argon2id + pbkdf2 in slot 5, a luks2-keyring and a foreign token.
    sparse("attached", "20M");
    cs({"luksFormat", "--type", "luks2", dir_ / "attached", dir_ / "k1"}, pbkdf2);
    cs({"luksAddKey", "--pbkdf", "argon2id", "--pbkdf-force-iterations", "4", "--pbkdf-memory",
        "32", "--pbkdf-parallel", "1", "-d", dir_ / "k1", dir_ / "attached", dir_ / "k2"});
    cs({"luksAddKey", "--key-slot", "5", "-d", dir_ / "k1", dir_ / "attached", dir_ / "k3"}, pbkdf2);
    cs({"token", "add", "--key-description", "ds-diff", "--key-slot", "0", dir_ / "attached"});
    cs({"token", "import", "--json-file", dir_ / "token.json", dir_ / "attached"});
    AddBase("attached", "attached", "");
    // Detached, 64 KiB metadata copies, two keyslots.
    sparse("detached.data", "8M");
    sparse("detached", "4M");
    cs({"luksFormat", "--type", "luks2", "--luks2-metadata-size", "64k", "--luks2-keyslots-size",
        "1M", "--header", dir_ / "detached", dir_ / "detached.data", dir_ / "k1"}, pbkdf2);
    cs({"luksAddKey", "--header", dir_ / "detached", "-d", dir_ / "k1", dir_ / "detached.data",
        dir_ / "k2"}, pbkdf2);
    AddBase("detached", "detached", "detached.data");
    // A reencryption in progress (checksum resilience, reencrypt keyslot, two digests).
    sparse("reencrypt", "20M");
    cs({"luksFormat", "--type", "luks2", dir_ / "reencrypt", dir_ / "k1"}, pbkdf2);
    cs({"reencrypt", "--init-only", "-d", dir_ / "k1", dir_ / "reencrypt"}, pbkdf2);
    AddBase("reencrypt", "reencrypt", "");
    // Encryption with the header at the start (data shift): backup segments, linear segments.
    sparse("datashift", "24M");
    cs({"reencrypt", "--encrypt", "--init-only", "--type", "luks2", "--reduce-device-size", "8M",
        "-d", dir_ / "k1", dir_ / "datashift"}, pbkdf2);
    AddBase("datashift", "datashift", "");
    ASSERT_EQ(bases_.size(), 4u);
  }

  void AddBase(const std::string& name, const std::string& file, const std::string& data) {
    Base b;
    b.name = name;
    b.image = dir_ / file;
    b.data = data.empty() ? "" : dir_ / data;
    auto v = b.data.empty() ? Volume::Load(*PosixEnv(), b.image, "", false)
                            : Volume::Load(*PosixEnv(), b.data, b.image, false);
    ASSERT_TRUE(v.ok()) << name << ": " << v.status().message();
    ASSERT_FALSE(v->header_state().needs_repair()) << name;
    b.md = v->metadata();
    bases_.push_back(b);
  }

  // A private copy of each base per worker slot (cryptsetup may repair a copy in place).
  std::string SlotFile(const Base& b, int slot) {
    const std::string path = b.image + ".slot" + std::to_string(slot);
    if (!made_.count(path)) {
      auto r = test::RunProgram({"cp", "--sparse=always", b.image, path});
      EXPECT_EQ(r.exit_code, 0) << r.err;
      made_[path] = true;
    }
    return path;
  }

  test::TempDir dir_;
  std::vector<Base> bases_;
  std::map<std::string, bool> made_;
};

TEST_F(CryptsetupDiff, MutatedHeadersGetTheSameVerdict) {
  const char* seed_env = std::getenv("DISKSEAL_DIFF_SEED");
  uint64_t seed = 20261204;
  if (seed_env && std::string(seed_env) == "random") seed = std::random_device{}();
  else seed = EnvU64("DISKSEAL_DIFF_SEED", seed);
  const uint64_t cases = EnvU64("DISKSEAL_DIFF_CASES", 2000);
  const int64_t only = std::getenv("DISKSEAL_DIFF_ONLY") ? int64_t(EnvU64("DISKSEAL_DIFF_ONLY", 0)) : -1;
  std::cout << "[ seed ] DISKSEAL_DIFF_SEED=" << seed << " DISKSEAL_DIFF_CASES=" << cases << "\n";
  const int slots = 2;

  struct Outcome {
    Case c;
    DisksealVerdict ds;
    int cs_exit = -1;
    std::string path;
  };
  int both_load = 0, both_refuse = 0, skipped = 0;
  std::map<const KnownDifference*, int> known_hits;
  std::vector<std::string> failures;

  auto judge = [&](Outcome& o) {
    const bool cs_loads = o.cs_exit == 0;
    if (o.cs_exit != 0 && o.cs_exit != 1) {
      // 1 is cryptsetup's "wrong parameters / not a valid LUKS device"; anything else is a
      // cryptsetup failure of its own, not a verdict.
      failures.push_back("case " + std::to_string(o.c.index) + ": cryptsetup exited " +
                         std::to_string(o.cs_exit));
      return;
    }
    if (cs_loads == o.ds.loads) {
      (cs_loads ? both_load : both_refuse)++;
      return;
    }
    // Disagreement: ask cryptsetup why (the image is rewritten: cryptsetup may have repaired it).
    std::string why = o.ds.why;
    if (o.ds.loads) {
      WriteCase(o.c, o.path);
      auto r = test::RunProgram({"cryptsetup", "luksDump", "--debug", o.path});
      why = r.out + r.err;
    }
    for (const auto& k : kKnownDifferences) {
      if (k.diskseal_refuses == !o.ds.loads && why.find(k.match) != std::string::npos) {
        ++known_hits[&k];
        return;
      }
    }
    std::ostringstream msg;
    msg << "case " << o.c.index << " (seed " << seed << "): "
        << (o.ds.loads ? "diskseal loads, cryptsetup refuses" : "diskseal refuses, cryptsetup loads");
    for (const auto& l : o.c.log) msg << "\n    " << l;
    if (!o.ds.loads) {
      msg << "\n    diskseal: " << o.ds.why;
    } else {
      // The last debug lines before cryptsetup gave up name the rule.
      std::vector<std::string> lines;
      std::istringstream in(why);
      for (std::string l; std::getline(in, l);)
        if (l.rfind("# ", 0) == 0) lines.push_back(l);
      size_t from = lines.size() > 8 ? lines.size() - 8 : 0;
      for (size_t i = from; i < lines.size(); ++i) msg << "\n    cryptsetup" << lines[i];
    }
    failures.push_back(msg.str());
  };

  for (uint64_t first = 0; first < cases; first += slots) {
    std::vector<Outcome> batch;
    std::vector<pid_t> pids;
    for (int s = 0; s < slots && first + uint64_t(s) < cases; ++s) {
      const int index = int(first) + s;
      if (only >= 0 && index != only) continue;
      Outcome o;
      o.c = MakeCase(bases_, seed, index);
      o.path = SlotFile(*o.c.base, s);
      if (!WriteCase(o.c, o.path)) {
        ++skipped;
        continue;
      }
      // diskseal first: cryptsetup may rewrite a damaged copy of the file.
      try {
        o.ds = Diskseal(*o.c.base, o.path, o.c.base->data);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "case " << index << ": diskseal threw " << e.what();
        continue;
      }
      pids.push_back(SpawnLuksDump(o.path));
      batch.push_back(std::move(o));
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      batch[i].cs_exit = pids[i] < 0 ? 127 : Wait(pids[i]);
      judge(batch[i]);
    }
  }
  std::cout << "[ diff ] both load " << both_load << ", both refuse " << both_refuse
            << ", not encodable " << skipped << "\n";
  for (const auto& [k, n] : known_hits)
    std::cout << "[ diff ] known difference x" << n << ": " << k->match << "\n";
  for (size_t i = 0; i < failures.size() && i < 40; ++i) ADD_FAILURE() << failures[i];
  EXPECT_TRUE(failures.empty()) << failures.size() << " new disagreements";
  if (only < 0 && cases >= 200) {
    // The mutations must exercise both sides of the rules, or the test proves nothing.
    EXPECT_GT(both_load, int(cases / 20));
    EXPECT_GT(both_refuse, int(cases / 5));
  }
}

}  // namespace
}  // namespace ds::luks2
