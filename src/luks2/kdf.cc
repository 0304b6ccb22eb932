// Choosing PBKDF costs: benchmark to the requested time unless forced, within cryptsetup's limits.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "crypto/crypto.h"
#include "luks2/format.h"
#include "luks2/volume.h"

namespace ds::luks2 {

namespace {
using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

Result<double> Pbkdf2PerMs(const std::string& hash) {
  uint8_t salt[32] = {}, out[32];
  uint32_t iters = 1 << 14;
  for (;;) {
    auto t = Clock::now();
    DS_RETURN_IF_ERROR(Pbkdf2(hash, AsBytes("diskseal-benchmark"), salt, iters, out));
    double ms = MsSince(t);
    if (ms >= 50 || iters >= (1u << 26)) return iters / std::max(ms, 0.001);
    iters *= 4;
  }
}
}  // namespace

Result<KdfSpec> ChooseKdf(const PbkdfOptions& o) {
  KdfSpec k;
  k.type = o.type;
  k.hash = o.hash;
  if (HashSize(o.hash) == 0) return InvalidArgument("hash '" + o.hash + "' is not supported");
  if (o.type == "pbkdf2") {
    if (o.force_iterations) {
      if (o.force_iterations < kMinPbkdf2Iterations)
        return InvalidArgument("--pbkdf-force-iterations: pbkdf2 needs at least 1000 iterations");
      k.iterations = o.force_iterations;
      return k;
    }
    if (o.iter_time_ms == 0) return InvalidArgument("--iter-time must be positive");
    DS_ASSIGN_OR_RETURN(double per_ms, Pbkdf2PerMs(o.hash));
    double it = per_ms * o.iter_time_ms;
    k.iterations = uint32_t(std::clamp(it, double(kMinPbkdf2Iterations), double(UINT32_MAX)));
    return k;
  }
  if (o.type != "argon2i" && o.type != "argon2id")
    return InvalidArgument("--pbkdf '" + o.type + "' is not supported (pbkdf2, argon2i, argon2id)");
  if (o.parallel < 1 || o.parallel > kMaxArgon2Threads)
    return InvalidArgument("--pbkdf-parallel must be 1..4");
  if (o.memory_kib < kMinArgon2MemoryKiB || o.memory_kib > kMaxArgon2MemoryKiB)
    return InvalidArgument("--pbkdf-memory must be 32..4194304 KiB");
  uint32_t cpus = std::min<uint32_t>(o.parallel, uint32_t(std::max(1u, std::thread::hardware_concurrency())));
  // Never ask for more than half of the memory that is free now: a keyslot the machine cannot
  // open at boot is worse than a cheaper one.
  uint64_t avail_kib = uint64_t(sysconf(_SC_AVPHYS_PAGES)) * uint64_t(sysconf(_SC_PAGESIZE)) / 1024;
  uint32_t mem = uint32_t(std::min<uint64_t>(o.memory_kib, std::max<uint64_t>(avail_kib / 2, kMinArgon2MemoryKiB)));
  mem = std::max(mem, 8 * cpus);
  k.cpus = cpus;
  k.memory_kib = mem;
  if (o.force_iterations) {
    if (o.force_iterations < kMinArgon2Time)
      return InvalidArgument("--pbkdf-force-iterations: argon2 needs a time cost of at least 4");
    k.time = o.force_iterations;
    return k;
  }
  if (o.iter_time_ms == 0) return InvalidArgument("--iter-time must be positive");
  uint8_t salt[32] = {}, out[32];
  for (;;) {
    auto t = Clock::now();
    DS_RETURN_IF_ERROR(Argon2(o.type == "argon2i" ? Argon2Type::kArgon2i : Argon2Type::kArgon2id,
                              AsBytes("diskseal-benchmark"), salt, kMinArgon2Time, k.memory_kib,
                              k.cpus, out));
    double ms = std::max(MsSince(t), 0.01);
    if (ms > o.iter_time_ms && k.memory_kib > kMinArgon2MemoryKiB) {
      // Too slow even at the minimum time cost: use less memory.
      k.memory_kib = std::max<uint32_t>(uint32_t(k.memory_kib * (o.iter_time_ms / ms)), std::max(kMinArgon2MemoryKiB, 8 * k.cpus));
      k.time = kMinArgon2Time;
      return k;
    }
    k.time = uint32_t(std::clamp(kMinArgon2Time * o.iter_time_ms / ms, double(kMinArgon2Time), 1e6));
    return k;
  }
}

Result<uint32_t> ChooseDigestIterations(const PbkdfOptions& o) {
  // A forced-cost run (tests, slow guests) uses the minimum; otherwise aim at 100 ms, as
  // cryptsetup's digest benchmark does roughly.
  if (o.force_iterations) return kMinPbkdf2Iterations;
  DS_ASSIGN_OR_RETURN(double per_ms, Pbkdf2PerMs("sha256"));
  return uint32_t(std::clamp(per_ms * 100, double(kMinPbkdf2Iterations), double(UINT32_MAX)));
}

}  // namespace ds::luks2
