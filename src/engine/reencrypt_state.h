// The state of an in-place operation as LUKS2 records it, in cryptsetup's layout so that either
// tool can finish what the other started:
//  - a "reencrypt" keyslot (mode, direction, resilience area) and its verification digest,
//  - config.requirements.mandatory = ["online-reencrypt-v2"] while in progress,
//  - backup segments describing the old layout ("backup-previous") and the new one
//    ("backup-final"), and regular segments: the part already done (new), at most one hotzone
//    flagged "in-reencryption" (a step was under way), and the part not yet done (old).
// Forward (start to end) and backward (end to start, cryptsetup's choice for decrypt) operations
// are supported, and encryption with the header at the start of the device (data shift, below).
//
// Data shift (cryptsetup's layout for `reencrypt --encrypt --reduce-device-size R`): the header
// takes the first S = R/2 bytes and the data moves S bytes towards the end. Before the header is
// written, the first S bytes of plaintext are copied to the last S bytes of the device (the
// "moved segment"); the operation then runs backward, each hotzone of at most S bytes read at
// logical offset p from the old place (p, or the moved copy for p < S) and written at S + p.
// A write never reaches a byte whose data is not yet durably recorded as encrypted, so an
// interrupted hotzone is simply done again from its source (resilience "datashift").
//
// Decryption of such a volume (cryptsetup 2.6.1's `reencrypt --decrypt --header NEWFILE`): the
// header goes to a file, and the ciphertext of logical [0, S), which sat at device [S, 2S), is
// copied to device [0, S) (the "moved segment", crypt at offset 0) before that header exists
// under its name. The operation then runs forward but in this order: logical [S, end) in hotzones
// of at most S bytes, each read at S + p and written at p (below its source: resilience as for
// datashift), and last the moved segment [0, S) in one hotzone decrypted in place (checksums).
// Resilience "datashift-checksum", requirement "online-reencrypt-v3".
#pragma once

#include <algorithm>
#include <optional>
#include <vector>

#include "io/block_device.h"
#include "luks2/keyslot.h"
#include "luks2/metadata.h"
#include "util/secure_buffer.h"

namespace ds::engine {

enum class Mode { kEncrypt, kDecrypt, kReencrypt };
// kDatashiftChecksum: decryption with the header at the start (cryptsetup 2.6.1's layout, below):
// moves are redone from their intact source, the one in-place hotzone uses checksums.
enum class Resilience { kNone, kChecksum, kJournal, kDatashift, kDatashiftChecksum };

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
  bool backward = false;
  int keyslot = -1;  // the reencrypt keyslot
  ResilienceArea area;
  luks2::SegmentInfo old_seg, new_seg;  // backup-previous, backup-final
  int digest_old = -1, digest_new = -1;  // -1 for a linear side
  uint64_t data_size = 0;                // bytes the operation covers
  uint64_t done = 0;                     // bytes already in the new layout (at the start when
                                         // forward, at the end when backward)
  std::optional<uint64_t> hotzone_len;   // a step next to the done part was under way
  // Data shift only: area.shift_size, and the copy of the first `shift` bytes of the old data.
  uint64_t shift = 0;
  std::optional<luks2::SegmentInfo> moved;
  // Device offsets of logical byte `pos` in the old and the new layout.
  uint64_t OldAt(uint64_t pos) const {
    return moved && pos < shift ? moved->offset + pos : old_seg.offset + pos;
  }
  uint64_t NewAt(uint64_t pos) const { return new_seg.offset + pos; }
  uint32_t sector_size() const;          // the larger of the two sides' sector sizes
  // Where the next `len` bytes to transform start, given `done`.
  uint64_t StepOffset(uint64_t done_bytes, uint64_t len) const {
    if (decrypt_shift()) return done_bytes < data_size - shift ? shift + done_bytes : 0;
    return backward ? data_size - done_bytes - len : done_bytes;
  }
  // Decryption with the header at the start: `done` counts [shift, data_size) first, then the
  // moved segment [0, shift).
  bool decrypt_shift() const { return area.type == Resilience::kDatashiftChecksum; }
  // With a data shift: the next hotzone's length, given `done_bytes`. The part outside the moved
  // copy goes in pieces of at most `shift` bytes, the moved copy in one piece (cryptsetup cannot
  // resume a split one); it comes last both ways (reencrypt_offset_backward_moved, and
  // decryption's forward order above).
  uint64_t ShiftStepLength(uint64_t done_bytes) const {
    const uint64_t left = data_size - done_bytes;
    return left > shift ? std::min(shift, left - shift) : left;
  }
};

// nullopt when no operation is in progress. kCorrupt when the metadata is not a layout we can
// continue (naming why); kUnsupported, naming the tool that can finish it, for cryptsetup's
// reencryption that also moves the data (the one layout diskseal does not carry on).
Result<std::optional<State>> ReadState(const luks2::Metadata& md, uint64_t data_device_size);

// Rewrites the regular segments for progress `done`, with a hotzone of `hotzone_len` flagged
// in-reencryption when given. Backup segments, keyslots and digests are kept.
void SetProgress(luks2::Metadata& md, const State& st, uint64_t done,
                 std::optional<uint64_t> hotzone_len);

// The final layout in one step: the new segment alone; the reencrypt keyslot, its digest and the
// requirement removed. Nothing about the operation remains to be misread after a crash.
void SetFinished(luks2::Metadata& md, const State& st);

// The hash of checksum resilience when none is asked for: sha256 (cryptsetup's default), or md5
// where md5 hashes at least 1.5x faster on this machine (measured once per process): a CPU
// without SHA instructions, as in a QEMU guest, where md5 ran at 519 MB/s against sha256's 75 and
// hashing every byte was the largest part of an online step (README "Online"); with SHA
// instructions sha256 is the faster (1548 against 668 MiB/s on this project's build host).
// md5 is safe here: the checksums are no security function. After a crash they only tell, block
// by block of the one interrupted hotzone, whether the block still holds its old bytes; a false
// match would need a block's new bytes (ciphertext under a key nobody else knows, or the
// plaintext of such ciphertext) to collide with its old ones, which no one can aim for.
// cryptsetup reads and resumes either (`--resilience-hash md5`). Where OpenSSL lacks md5 (FIPS
// mode): sha256.
std::string DefaultChecksumHash();
// A --resilience-hash value: one that OpenSSL here provides and that cryptsetup also accepts for
// checksum resilience; InvalidArgument naming the choices otherwise.
Result<std::string> ParseChecksumHash(const std::string& name);

// Makes freshly formatted metadata (one crypt segment, one luks2 keyslot, digest 0) into
// "encryption in progress, nothing done yet" with the given resilience area, and adds the
// verification digest. Used before the first header is ever written.
// `checksum_hash` (checksum resilience only): empty for DefaultChecksumHash().
Status InitEncrypt(luks2::Metadata& md, const SecureBuffer& new_key, Resilience resilience,
                   uint32_t digest_iterations, std::string_view checksum_hash = {});
// Makes freshly formatted metadata whose crypt segment starts at `shift` (a header image for the
// start of a device of `device_size` bytes) into "encryption with data shift in progress" in
// cryptsetup's layout: the data is the first `data_size` bytes of the device, its first `shift`
// bytes copied to the end (the caller does the copy before the header is put in place).
// Preconditions: shift <= data_size, data_size + 2 * shift <= device_size.
Status InitEncryptShift(luks2::Metadata& md, const SecureBuffer& new_key, uint64_t shift,
                        uint64_t data_size, uint64_t device_size, uint32_t digest_iterations);
// Makes the metadata of a volume whose header is at the start (one crypt segment at offset
// `shift`, as `encrypt --reduce-device-size 2*shift` leaves it), copied into a header file, into
// "decryption with data shift in progress, nothing done" in cryptsetup 2.6.1's layout. The caller
// must copy device [shift, 2*shift) to [0, shift) after this header is durable and before it is
// put where anything looks for it. Precondition: device_size > 2 * shift.
Status InitDecryptShift(luks2::Metadata& md, const SecureBuffer& old_key, uint64_t device_size,
                        uint32_t digest_iterations);
// Makes an unlocked, plain LUKS2 volume with a detached header (one crypt segment at offset 0)
// into "decryption in progress, nothing done yet", backward as cryptsetup does it.
Status InitDecrypt(luks2::Metadata& md, const SecureBuffer& old_key, Resilience resilience,
                   uint32_t digest_iterations, std::string_view checksum_hash = {});

// Makes an unlocked LUKS2 volume with a detached header (one crypt segment) into "reencryption
// to a new key in progress": a new luks2 keyslot (under `passphrase`) and digest for `new_key`,
// the new segment parameters from `new_cipher`/`new_sector`, forward as cryptsetup does it.
// At the end the old keyslots and their digest are removed with the final layout.
Status InitReencrypt(luks2::Metadata& md, BlockDevice& md_dev, const SecureBuffer& old_key,
                     const SecureBuffer& new_key, std::span<const uint8_t> passphrase,
                     const luks2::KdfSpec& kdf, const std::string& new_cipher, uint32_t new_sector,
                     Resilience resilience, uint32_t digest_iterations, std::string_view checksum_hash = {});
// One keyslot to make for the new key: under `passphrase`; `replaces` names the old keyslot it
// takes over (every token bound to that keyslot is bound to the new one too, so that when the old
// keyslots go at the end no token points at a removed keyslot that had a successor).
struct NewKeyslot {
  std::span<const uint8_t> passphrase;
  std::optional<int> replaces;
};
Status InitReencrypt(luks2::Metadata& md, BlockDevice& md_dev, const SecureBuffer& old_key,
                     const SecureBuffer& new_key, const std::vector<NewKeyslot>& new_keyslots,
                     const luks2::KdfSpec& kdf, const std::string& new_cipher, uint32_t new_sector,
                     Resilience resilience, uint32_t digest_iterations, std::string_view checksum_hash = {});


// The verification digest binds keys and the reencryption parameters (cryptsetup's
// luks2_reencrypt_digest.c, version 2): a header whose reencryption metadata was tampered with,
// or keys that do not belong to it, are refused before anything is written.
Bytes VerificationData(const luks2::Metadata& md, const SecureBuffer* old_key,
                       const SecureBuffer* new_key);
Status CheckVerificationDigest(const luks2::Metadata& md, const State& st,
                               const SecureBuffer* old_key, const SecureBuffer* new_key);

}  // namespace ds::engine
