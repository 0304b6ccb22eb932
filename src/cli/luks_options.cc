#include "cli/luks_options.h"

#include "cli/claim.h"
#include "engine/reencrypt_state.h"
#include "engine/binding.h"

#include <unistd.h>

#include "util/bytes.h"

namespace ds::cli {

void AddDeviceArgs(CLI::App& app, DeviceArgs& d, bool required) {
  app.add_option("device", d.device, "the device or image file")->required(required);
  app.add_option("--header", d.header, "detached LUKS2 header file");
}

void AddPbkdfOptions(CLI::App& app, luks2::PbkdfOptions& p) {
  app.add_option("--pbkdf", p.type, "pbkdf2, argon2i or argon2id (default argon2id)");
  app.add_option("--hash", p.hash, "hash for pbkdf2 and the AF splitter (default sha256)");
  app.add_option("--iter-time,-i", p.iter_time_ms, "milliseconds to spend deriving the key (default 2000)");
  app.add_option("--pbkdf-force-iterations", p.force_iterations,
                 "fixed cost: pbkdf2 iterations or argon2 time cost (no benchmark)");
  app.add_option("--pbkdf-memory", p.memory_kib, "argon2 memory cost in KiB (default 1048576)");
  app.add_option("--pbkdf-parallel", p.parallel, "argon2 threads (default 4)");
}

void AddSlotOption(CLI::App& app, SlotArg& s, const std::string& help) {
  app.add_option("--key-slot,-S", s.slot, help)->check(CLI::Range(0, 31));
}

CLI::Option* AddSizeOption(CLI::App& app, const std::string& name, uint64_t& target,
                           const std::string& help) {
  return app.add_option_function<std::string>(
      name,
      [&target, name](const std::string& v) {
        auto s = ParseSize(v);
        if (!s) throw CLI::ValidationError(name, "not a size: " + v);
        target = *s;
      },
      help);
}

std::string CheckHotzoneSize(uint64_t v, uint64_t memory_bytes) {
  if (v == 0) return "must be positive: it is the memory each step of the operation works in (default 32M)";
  if (v < kMinHotzone || v % 4096)
    return std::to_string(v) + " bytes is not a multiple of 4k of at least 64k (default 32M)";
  if (memory_bytes && v > memory_bytes / 2)
    return std::to_string(v >> 20) + " MiB is more than half of this machine's memory (" +
           std::to_string(memory_bytes >> 20) + " MiB)";
  return "";
}

CLI::Option* AddHotzoneSizeOption(CLI::App& app, uint64_t& target, const std::string& help) {
  return app.add_option_function<std::string>(
      "--hotzone-size",
      [&target](const std::string& v) {
        auto s = ParseSize(v);
        if (!s) throw CLI::ValidationError("--hotzone-size", "not a size: " + v + " (e.g. 4M, 64k)");
        const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
        const uint64_t mem = pages > 0 && page > 0 ? uint64_t(pages) * uint64_t(page) : 0;
        const std::string why = CheckHotzoneSize(*s, mem);
        if (!why.empty()) throw CLI::ValidationError("--hotzone-size", why);
        target = *s;
      },
      help);
}

Result<OpenedVolume> LoadAndUnlock(Globals& g, const DeviceArgs& d, const KeySource& keys,
                                   std::optional<int> slot, bool writable, const VaultOptions* vault) {
  DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(*g.env, d.device, d.header, writable));
  DS_RETURN_IF_ERROR(v.CheckRequirements());
  DS_RETURN_IF_ERROR(CheckCryptsetupReencrypt(v.metadata(), d.device));
  // A detached header used with another device is refused before the PBKDF (size, ids) and
  // before anything is written (the plaintext's filesystem through the header's key).
  DS_RETURN_IF_ERROR(engine::CheckBindingKeyless(*g.env, v, d.header));
  // An operation in progress maps two layouts: every key the passphrase opens is needed.
  auto st = engine::ReadState(v.metadata(), v.data_device().Size());
  const bool in_progress = st.ok() && *st;
  std::map<int, SecureBuffer> all;
  DS_ASSIGN_OR_RETURN(luks2::Volume::Unlocked u,
                      WithTries<luks2::Volume::Unlocked>(
                          *g.err, keys, vault && vault->enabled(),
                          [&] { return ObtainPassphrase(*g.env, keys, vault, v.metadata(), d.device); },
                          [&](const SecureBuffer& pass) -> Result<luks2::Volume::Unlocked> {
                            DS_ASSIGN_OR_RETURN(luks2::Volume::Unlocked one, v.Unlock(pass.span(), slot));
                            if (in_progress) {
                              DS_ASSIGN_OR_RETURN(all, v.UnlockAll(pass.span()));
                            }
                            return one;
                          }));
  OpenedVolume ov{std::move(v), std::move(u), std::move(all)};
  DS_RETURN_IF_ERROR(engine::CheckBindingUnlocked(ov.volume, d.header, ov.Keys()));
  return ov;
}

}  // namespace ds::cli
