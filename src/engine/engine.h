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

#include "luks2/volume.h"
#include "util/progress.h"

namespace ds::engine {

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
