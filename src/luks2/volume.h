// A LUKS2 volume: its header (metadata device) and data (data device, the same device unless the
// header is detached). The operations every command is built from: format, unlock, keyslots,
// tokens, plaintext access. Nothing is written to a device until Commit() or an explicit write.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "io/block_device.h"
#include "luks2/header_io.h"
#include "luks2/keyslot.h"
#include "luks2/metadata.h"
#include "util/secure_buffer.h"

namespace ds::luks2 {

// How to derive keyslot keys, with cryptsetup's flag meanings.
struct PbkdfOptions {
  std::string type = "argon2id";  // --pbkdf
  std::string hash = "sha256";    // --hash (pbkdf2 and the AF)
  uint32_t iter_time_ms = 2000;   // --iter-time
  uint32_t force_iterations = 0;  // --pbkdf-force-iterations: pbkdf2 iterations / argon2 time
  uint32_t memory_kib = 1u << 20; // --pbkdf-memory (argon2 upper bound)
  uint32_t parallel = 4;          // --pbkdf-parallel (argon2 upper bound)
};

// Turns options into concrete costs, benchmarking unless the costs are forced. Checks
// cryptsetup's limits so cryptsetup can open what we make.
Result<KdfSpec> ChooseKdf(const PbkdfOptions& o);
// PBKDF2 iterations for the volume-key digest (cryptsetup benchmarks a short target).
Result<uint32_t> ChooseDigestIterations(const PbkdfOptions& o);

struct FormatOptions {
  std::string cipher = "aes-xts-plain64";
  uint32_t key_size_bits = 512;
  uint32_t sector_size = 0;  // 0: 4096 when the data area allows it (as cryptsetup 2.6), else 512
  uint64_t metadata_size = 16u << 10;  // --luks2-metadata-size
  uint64_t keyslots_size = 0;          // --luks2-keyslots-size; 0 = what is left below the data
  std::optional<uint64_t> offset_sectors;  // --offset (512-byte sectors)
  std::string label, subsystem, uuid;      // uuid empty: random
  PbkdfOptions pbkdf;
  std::optional<int> keyslot;              // --key-slot
  bool force = false;                      // overwrite an existing LUKS header
  // The volume key to use (cryptsetup's --volume-key-file), borrowed; null: a random one. Used
  // to rebuild a lost header from the vault (engine/volume_escrow.h).
  const SecureBuffer* volume_key = nullptr;
};

class Volume {
 public:
  Volume(Volume&&) = default;
  Volume& operator=(Volume&&) = default;

  // Reads the header of `device` (or of `header_path` when it is not empty: detached header).
  static Result<Volume> Load(Env& env, const std::string& device, const std::string& header_path,
                             bool writable);
  // Reads the header from devices the caller already opened (tests hand in fault injectors).
  // `data` null: the header is attached (data on `md`).
  static Result<Volume> FromDevices(std::string name, std::unique_ptr<BlockDevice> md,
                                    std::unique_ptr<BlockDevice> data);
  // Creates a new volume. The volume key is random; `passphrase` goes into the first keyslot.
  // Attached: the first areas_end bytes of `device` are wiped. Detached: the header file is
  // created if missing and the data device is not written at all.
  // `before_commit`, when set, may reshape the new header (e.g. into "encryption in progress")
  // before it is written for the first time, so that the first header ever on disk already tells
  // the truth. `key_out`, when set, receives the volume key.
  using FormatHook = std::function<Status(Metadata& md, const SecureBuffer& volume_key)>;
  static Result<Volume> Format(Env& env, const std::string& device, const std::string& header_path,
                               const FormatOptions& opts, std::span<const uint8_t> passphrase,
                               const FormatHook& before_commit = nullptr,
                               SecureBuffer* key_out = nullptr);

  const Metadata& metadata() const { return read_.md; }
  Metadata& mutable_metadata() { return read_.md; }
  const HeaderRead& header_state() const { return read_; }
  BlockDevice& metadata_device() { return *md_dev_; }
  BlockDevice& data_device() { return data_dev_ ? *data_dev_ : *md_dev_; }
  bool detached() const { return data_dev_ != nullptr; }
  // Name for messages: the data device path.
  const std::string& name() const { return name_; }

  struct Unlocked {
    int keyslot = -1;
    int digest = -1;
    SecureBuffer key;
  };
  // Tries `keyslot` only, or every luks2 keyslot (priority 2 first; priority 0 only when named).
  // kPermissionDenied when no keyslot opens with this passphrase; kUnsupported naming the flag
  // when the header has a mandatory requirement we do not know.
  Result<Unlocked> Unlock(std::span<const uint8_t> passphrase,
                          std::optional<int> keyslot = std::nullopt) const;
  Status CheckRequirements() const;
  // Every key this passphrase opens, by digest id (an in-place reencryption has an old and a new
  // key, usually behind the same passphrase). kPermissionDenied when it opens none.
  Result<std::map<int, SecureBuffer>> UnlockAll(std::span<const uint8_t> passphrase) const;

  // Adds a keyslot holding `volume_key` (which must match `digest`) under `passphrase`.
  Result<int> AddKeyslot(const Unlocked& unlocked, std::span<const uint8_t> passphrase,
                         const PbkdfOptions& pbkdf, std::optional<int> slot);
  // Replaces keyslot unlocked.keyslot by one under `new_passphrase`, in the same slot number, in
  // one header commit; the old area is wiped afterwards.
  Status ChangeKeyslot(const Unlocked& unlocked, std::span<const uint8_t> new_passphrase,
                       const PbkdfOptions& pbkdf);
  // Removes the keyslot (and its references) in one header commit, then wipes its area.
  // Refuses the last keyslot that can unlock the data unless `force`.
  Status RemoveKeyslot(int id, bool force);

  Result<int> ImportToken(const Json& token, std::optional<int> id, bool replace);
  Result<Json> ExportToken(int id) const;
  Status RemoveToken(int id);

  // Validates and writes the header (both copies).
  Status Commit();

  // The plaintext of the data segments laid end to end. `keys` maps digest id -> volume key for
  // every digest a regular segment uses. Refuses a header that needs recovery of an interrupted
  // operation (a segment flagged in-reencryption).
  Result<std::unique_ptr<BlockDevice>> OpenData(const std::map<int, const SecureBuffer*>& keys);

 private:
  Volume() = default;
  Result<std::pair<uint64_t, uint64_t>> FindAreaGap(uint64_t need) const;
  Status WipeArea(uint64_t offset, uint64_t size);

  std::string name_;
  std::unique_ptr<BlockDevice> md_dev_;
  std::unique_ptr<BlockDevice> data_dev_;  // null: attached header (data on md_dev_)
  HeaderRead read_;
};

// Resolves a segment's byte size on a data device of `device_size` bytes ("dynamic" = to the end,
// rounded down to the sector size). kCorrupt if the segment does not fit.
Result<uint64_t> SegmentBytes(const SegmentInfo& s, uint64_t device_size);

std::string NewUuid();
bool IsValidUuid(const std::string& s);

}  // namespace ds::luks2
