// The state of an in-place operation as LUKS2 records it, in cryptsetup's layout so that either
// tool can finish what the other started:
//  - a "reencrypt" keyslot (mode, direction, resilience area) and its verification digest,
//  - config.requirements.mandatory = ["online-reencrypt-v2"] while in progress,
//  - backup segments describing the old layout ("backup-previous") and the new one
//    ("backup-final"), and regular segments: the part already done (new), at most one hotzone
//    flagged "in-reencryption" (a step was under way), and the part not yet done (old).
// Only forward in-place operations without a data shift are implemented here so far.
#pragma once

#include <optional>

#include "luks2/metadata.h"
#include "util/secure_buffer.h"

namespace ds::engine {

enum class Mode { kEncrypt, kDecrypt, kReencrypt };
enum class Resilience { kNone, kChecksum, kJournal };

const char* ModeName(Mode m);
const char* ResilienceName(Resilience r);
Result<Resilience> ParseResilience(const std::string& s);

struct ResilienceArea {
  Resilience type = Resilience::kChecksum;
  std::string hash = "sha256";  // checksum
  uint32_t block = 4096;        // checksum: bytes hashed per stored checksum
  uint64_t offset = 0, size = 0;
};

struct State {
  Mode mode = Mode::kEncrypt;
  int keyslot = -1;  // the reencrypt keyslot
  ResilienceArea area;
  luks2::SegmentInfo old_seg, new_seg;  // backup-previous, backup-final
  int digest_old = -1, digest_new = -1;  // -1 for a linear side
  uint64_t data_size = 0;                // bytes the operation covers
  uint64_t done = 0;                     // bytes [0, done) are in the new layout
  std::optional<uint64_t> hotzone_len;   // a step at `done` was under way
  uint32_t sector_size() const;          // the larger of the two sides' sector sizes
};

// nullopt when no operation is in progress. kCorrupt when the metadata is not a layout we can
// continue (naming why), kUnsupported for directions/modes not implemented (backward, datashift).
Result<std::optional<State>> ReadState(const luks2::Metadata& md, uint64_t data_device_size);

// Rewrites the regular segments for progress `done`, with a hotzone of `hotzone_len` flagged
// in-reencryption when given. Backup segments, keyslots and digests are kept.
void SetProgress(luks2::Metadata& md, const State& st, uint64_t done,
                 std::optional<uint64_t> hotzone_len);

// The final layout in one step: the new segment alone; the reencrypt keyslot, its digest and the
// requirement removed. Nothing about the operation remains to be misread after a crash.
void SetFinished(luks2::Metadata& md, const State& st);

// Makes freshly formatted metadata (one crypt segment, one luks2 keyslot, digest 0) into
// "encryption in progress, nothing done yet" with the given resilience area, and adds the
// verification digest. Used before the first header is ever written.
Status InitEncrypt(luks2::Metadata& md, const SecureBuffer& new_key, Resilience resilience,
                   uint32_t digest_iterations);

// The verification digest binds keys and the reencryption parameters (cryptsetup's
// luks2_reencrypt_digest.c, version 2): a header whose reencryption metadata was tampered with,
// or keys that do not belong to it, are refused before anything is written.
Bytes VerificationData(const luks2::Metadata& md, const SecureBuffer* old_key,
                       const SecureBuffer* new_key);
Status CheckVerificationDigest(const luks2::Metadata& md, const State& st,
                               const SecureBuffer* old_key, const SecureBuffer* new_key);

}  // namespace ds::engine
