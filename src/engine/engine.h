// The in-place engine: carries an operation recorded in a LUKS2 header (engine/reencrypt_state.h)
// to completion, one hotzone at a time, so that a crash at any instant leaves a header from which
// the same call finishes the job with the original data intact.
//
// Per hotzone (cryptsetup's reencrypt_step, with the lessons of its power-cut failures):
//   1. read the hotzone as it is on disk;
//   2. write the resilience data (checksums of the old blocks, or a journal copy of them) into
//      the reencrypt keyslot area and sync it;
//   3. commit the header with the hotzone flagged in-reencryption (the step's commit point);
//   4. transform (decrypt old, encrypt new) on all cores and write in place; sync the data;
//   5. commit the header with the hotzone done -- for the last one, the final layout itself, in
//      the same single commit that removes the reencryption metadata.
// Recovery of a flagged hotzone: checksum -- a block whose checksum still matches is still old
// and is transformed again, other blocks are already new; journal -- the old data is transformed
// again from the journal; none -- refused (the mode exists only when asked for by name).
// Data shift (header at the start, engine/reencrypt_state.h): step 2 is empty -- the hotzone is
// read at its old place and written `shift` bytes further, never over unread data -- and
// recovery does the hotzone again from its source. Step 5 is left to the next hotzone's step 3
// (one commit says "previous done, this one in progress", the header a separate "done" commit
// would have been followed by), to a stop, or to the final commit: one header write per
// hotzone instead of two. The moved copy's wipe is recorded with the
// final layout and done afterwards (FinishPendingWipe). Placing the header is engine/datashift.h.
#pragma once

#include <atomic>
#include <map>
#include <vector>

#include "luks2/volume.h"
#include "util/progress.h"

namespace ds::engine {

// The engine's side of a volume that stays in use while it runs (online: the filesystem stays
// mounted on a mapping of the volume). The engine calls Hold before it reads a hotzone and Release
// after the commit that records it done; between the two, the gate guarantees that no write of the
// volume's users reaches the hotzone's bytes on the data device, and that what users write there
// meanwhile lands after the engine's rewrite in the new layout (dm: queued in a suspended device).
// Outside a Hold/Release pair users' I/O follows the header's segments, which the gate makes the
// mapping follow. Threading: called on the engine's calling thread only. An error from either
// stops the operation with that error (the header is consistent; the gate's owner restores the
// mapping).
class ZoneGate {
 public:
  virtual ~ZoneGate() = default;
  // The hotzone is plaintext bytes [offset, offset + len); `done_after` is the engine's progress
  // (State::done) once it is finished.
  virtual Status Hold(uint64_t offset, uint64_t len, uint64_t done_after) = 0;
  // The hotzone is committed done; `md` is the header as committed.
  virtual Status Release(const luks2::Metadata& md) = 0;
  // The length the gate wants for the next hotzone, at most `max` (the engine's limit): a gate
  // whose users are busy asks for shorter zones, so no one waits long for one. The longest zone
  // is bytes [offset, offset + max); the engine keeps its start (its end when `backward`) and
  // rounds the length down to whole resilience blocks (at least one). Called before Hold.
  virtual uint64_t ZoneLength(uint64_t offset, uint64_t max, bool backward) {
    (void)offset;
    (void)backward;
    return max;
  }
};

// Where one hotzone step's time went (seconds), for profiling an online run.
struct StepTiming {
  uint64_t offset = 0, len = 0;
  double hold = 0;         // ZoneGate::Hold (switching the mapping)
  double read = 0;         // dropping the cache and reading the zone
  double resilience = 0;   // checksums or journal written and synced
  double commit_flag = 0;  // header commit: the zone in progress
  double write = 0;        // transform and write
  double sync = 0;         // data sync
  double commit_done = 0;  // header commit: the zone done
  double release = 0;      // ZoneGate::Release
};

struct EngineOptions {
  // Bounds memory: two buffers of half this (the hotzone being written and the next one, read
  // ahead). Datashift needs none of hotzone size: a few MiB per thread, whatever the shift.
  uint64_t hotzone_bytes = 32u << 20;
  unsigned threads = 0;               // 0: one per core
  const std::atomic<bool>* stop = nullptr;  // checked at every commit point
  // Stop at the first commit point once this run has transformed at least this many bytes
  // (0: no limit), as if `stop` were set: the work can be spread over maintenance windows.
  uint64_t stop_after = 0;
  Progress* progress = nullptr;
  // The volume is in use by others while the engine runs (online): the data device is read only
  // after dropping its page cache for the range (users write through another device, whose writes
  // that cache does not see), and no hotzone is read ahead (only a held zone is stable).
  // Operations that move data (data shift) are refused.
  bool in_use = false;
  // With in_use: users reach the data device through another block device (a device-mapper table
  // over it), whose I/O bypasses this device's page cache. A cached page then goes stale as soon
  // as a user writes part of it, and a buffered write of a zone's bytes in a page it shares with
  // bytes outside it (a zone edge off a page boundary) would write the whole page back, users'
  // bytes included, as they were. So every byte of a zone is read and written around the page
  // cache (BlockDevice::ReadAtUncached / WriteAtUncached): what the engine reads is the medium's,
  // what it writes is only its own. (In the QEMU guest that is also 3-9x faster than the page
  // cache: README "Online".) Not for the FUSE view, whose users share this device's page cache.
  bool users_bypass_cache = false;
  ZoneGate* gate = nullptr;  // not owned; with in_use, wraps every hotzone
  // Stop (ok, not kInterrupted) once the progress reaches this many bytes (State::done); no
  // step crosses it. 0: run to the end. Used to finish exactly one hotzone (online recovery).
  uint64_t until_done = 0;
  // Not owned; when set, one entry is appended per hotzone step (not for data shift steps).
  std::vector<StepTiming>* timings = nullptr;
};

// `keys` maps digest id -> volume key for the keys the operation needs (the new key to encrypt).
// Returns ok when the operation is complete (or there was none); kInterrupted when `stop` was
// seen at a commit point (the header then describes a consistent, resumable state).
Status RunOperation(luks2::Volume& volume, const std::map<int, const SecureBuffer*>& keys,
           const EngineOptions& opts);

// Areas that held plaintext outside the data (the moved copy of a data-shift encryption) are
// listed in a "diskseal-wipe" token committed with the final layout; this overwrites them with
// random bytes, then removes the token. Idempotent; RunOperation calls it; no key needed.
Status FinishPendingWipe(luks2::Volume& volume);

}  // namespace ds::engine
