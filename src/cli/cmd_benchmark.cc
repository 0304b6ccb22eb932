// `diskseal benchmark`: what this machine does per second, the numbers --iter-time and the
// engine's speed depend on (like `cryptsetup benchmark`).
#include <chrono>
#include <iomanip>
#include <ostream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "crypto/crypto.h"

namespace ds::cli {

namespace {
using Clock = std::chrono::steady_clock;

Result<double> CipherMiBps(const std::string& spec, size_t key_bytes, bool encrypt) {
  SecureBuffer key(key_bytes);
  DS_RETURN_IF_ERROR(RandomBytes(key.span()));
  DS_ASSIGN_OR_RETURN(auto c, SectorCipher::Create(spec, key.span()));
  Bytes buf(1 << 20);
  auto start = Clock::now();
  uint64_t done = 0;
  while (Clock::now() - start < std::chrono::milliseconds(250)) {
    DS_RETURN_IF_ERROR(encrypt ? c->Encrypt(buf, done / 512, 512) : c->Decrypt(buf, done / 512, 512));
    done += buf.size();
  }
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  return double(done) / (1 << 20) / secs;
}

// Checksum resilience hashes every byte of each hotzone in 4 KiB blocks (engine/engine.cc).
Result<double> ChecksumMiBps(const std::string& hash) {
  Bytes buf(1 << 20), sums(buf.size() / 4096 * HashSize(hash));
  auto start = Clock::now();
  uint64_t done = 0;
  while (Clock::now() - start < std::chrono::milliseconds(250)) {
    DS_RETURN_IF_ERROR(HashBlocks(hash, buf, 4096, sums));
    done += buf.size();
  }
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  return double(done) / (1 << 20) / secs;
}

Result<double> Pbkdf2PerSec(const std::string& hash) {
  uint8_t out[32];
  uint8_t salt[32] = {};
  const uint32_t iters = 100000;
  auto start = Clock::now();
  DS_RETURN_IF_ERROR(Pbkdf2(hash, AsBytes("benchmark"), salt, iters, out));
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  return iters / secs;
}
}  // namespace

Runner SetupBenchmark(CLI::App& app, Globals& g) {
  app.add_flag("--json", g.json, "print results as JSON");
  return [&g]() -> Status {
    nlohmann::ordered_json j;
    for (const char* h : {"sha1", "sha256", "sha512"}) {
      DS_ASSIGN_OR_RETURN(double v, Pbkdf2PerSec(h));
      j["pbkdf2"][h] = uint64_t(v);
    }
    for (auto [spec, kb] : {std::pair<const char*, size_t>{"aes-xts-plain64", 32},
                            {"aes-xts-plain64", 64}, {"aes-cbc-essiv:sha256", 32}}) {
      DS_ASSIGN_OR_RETURN(double e, CipherMiBps(spec, kb, true));
      DS_ASSIGN_OR_RETURN(double d, CipherMiBps(spec, kb, false));
      j["ciphers"].push_back({{"cipher", spec}, {"key_bits", kb * 8},
                              {"encrypt_mib_s", int(e)}, {"decrypt_mib_s", int(d)}});
    }
    // The --resilience-hash choices (engine::ParseChecksumHash); the default is the faster of md5
    // and sha256 (engine::DefaultChecksumHash).
    for (const char* h : {"md5", "sha1", "sha256", "blake2b-512"}) {
      if (!HashSize(h)) continue;  // not offered by this OpenSSL (FIPS mode)
      DS_ASSIGN_OR_RETURN(double v, ChecksumMiBps(h));
      j["checksums"].push_back({{"hash", h}, {"mib_s", int(v)}});
    }
    if (g.json) {
      *g.out << j.dump(2) << "\n";
      return Status::Ok();
    }
    for (auto& [h, v] : j["pbkdf2"].items())
      *g.out << "PBKDF2-" << std::left << std::setw(8) << h << v << " iterations per second\n";
    *g.out << "#     Algorithm |       Key |      Encryption |      Decryption\n";
    for (auto& c : j["ciphers"])
      *g.out << std::right << std::setw(20) << c["cipher"].get<std::string>() << " " << std::setw(5)
             << c["key_bits"].get<int>() << "b " << std::setw(10) << c["encrypt_mib_s"].get<int>()
             << " MiB/s " << std::setw(10) << c["decrypt_mib_s"].get<int>() << " MiB/s\n";
    for (auto& c : j["checksums"])
      *g.out << "checksum resilience " << std::left << std::setw(12) << c["hash"].get<std::string>() << std::right
             << std::setw(8) << c["mib_s"].get<int>() << " MiB/s\n";
    return Status::Ok();
  };
}

}  // namespace ds::cli
