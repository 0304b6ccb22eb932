// Flags several LUKS commands share (format, keyslot, encrypt, open ...), with cryptsetup's names.
#pragma once

#include <map>

#include <optional>
#include <string>

#include "cli/command.h"
#include "cli/key_input.h"
#include "cli/vault_options.h"
#include "luks2/volume.h"

namespace ds::cli {

struct DeviceArgs {
  std::string device;
  std::string header;  // --header: detached header file
};
// `required`: false where another flag can stand for the device (resume --all).
void AddDeviceArgs(CLI::App& app, DeviceArgs& d, bool required = true);

void AddPbkdfOptions(CLI::App& app, luks2::PbkdfOptions& p);

// --key-slot/-S as an optional int (-1 = not given).
struct SlotArg {
  int slot = -1;
  std::optional<int> get() const { return slot < 0 ? std::nullopt : std::optional<int>(slot); }
};
void AddSlotOption(CLI::App& app, SlotArg& s, const std::string& help);

// Loads the volume and unlocks it with the passphrase from `keys`.
struct OpenedVolume {
  luks2::Volume volume;
  luks2::Volume::Unlocked unlocked;
  // Every volume key the passphrase unlocks, by digest id: filled only when an in-place
  // operation is in progress (its segments are under two keys, or one key and plaintext).
  std::map<int, SecureBuffer> all;
  std::map<int, const SecureBuffer*> Keys() const {
    std::map<int, const SecureBuffer*> k = {{unlocked.digest, &unlocked.key}};
    for (const auto& [d, key] : all) k[d] = &key;
    return k;
  }
};
// With `vault` enabled and no key file, the passphrase is the one escrowed in the vault.
Result<OpenedVolume> LoadAndUnlock(Globals& g, const DeviceArgs& d, const KeySource& keys,
                                   std::optional<int> slot, bool writable,
                                   const VaultOptions* vault = nullptr);

// Size flags accept units (16k, 4M) like cryptsetup.
CLI::Option* AddSizeOption(CLI::App& app, const std::string& name, uint64_t& target,
                           const std::string& help);

// --hotzone-size: a size as above, refused (usage error, exit 1) when it cannot be meant: 0, not
// a multiple of 4 KiB or below 64 KiB, or more than half of the machine's memory.
inline constexpr uint64_t kMinHotzone = 64u << 10;
CLI::Option* AddHotzoneSizeOption(CLI::App& app, uint64_t& target, const std::string& help);
// Why `v` is not a usable hotzone size on a machine with `memory_bytes` (0: unknown), or "".
std::string CheckHotzoneSize(uint64_t v, uint64_t memory_bytes);

}  // namespace ds::cli
