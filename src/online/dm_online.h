// Online in-place operations through device-mapper: encrypt, decrypt or re-encrypt a volume while
// its mapping /dev/mapper/NAME stays live and mounted (README "Online").
//
// The stack (learned from cryptsetup's luks2_reencrypt.c, with fewer devices and no overlay):
//   NAME          the user's mapping: the header's segments (done part in the new layout, the
//                 rest in the old one), and during a step the hotzone in the NEW layout over
//   NAME-dshz     a private dm-linear 1:1 over the data device, suspended while the engine
//                 rewrites the hotzone on the data device directly.
// Per hotzone (DmGate::Hold/Release around the engine's step):
//   1. load NAME's table with the hotzone mapped new over NAME-dshz; suspend NAME (waits for I/O
//      in flight), suspend NAME-dshz, resume NAME: from now on users' writes into the hotzone are
//      encrypted with the new key and queue in NAME-dshz, reads there wait; I/O elsewhere flows.
//   2. the engine reads the zone from the data device (page cache dropped), writes its
//      resilience data, commits, transforms, writes, syncs, commits "done";
//   3. resume NAME-dshz: the queued writes land after the rewrite (already in the new layout:
//      they win), queued reads see the new data.
// Only hotzone I/O waits, for one step; other I/O waits only while NAME switches tables.
//
// A guardian process (forked at Start, memory locked, signals ignored) restores the mapping when
// the run ends, however it ends: normal end, error, or kill -9 of the run. It reads the state from
// the kernel (which devices are suspended, which range of NAME goes over NAME-dshz) and the header
// from disk: a zone left held is first finished by the engine (its writes are queued in the new
// layout, so it must become new before they land), then NAME-dshz is resumed and NAME gets the plain
// table of the header, and NAME-dshz is removed. The same restoration runs in-process when a
// later run finds NAME-dshz left behind (the guardian killed too). If the zone cannot be finished
// (an I/O error), NAME-dshz gets an error table instead, so that nothing waits forever.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "engine/engine.h"
#include "io/block_device.h"
#include "luks2/volume.h"
#include "util/secure_buffer.h"
#include "util/status.h"

namespace ds::online {

// The helper device of NAME.
std::string HotzoneName(const std::string& name);

// The live LUKS2 mapping of the volume `luks_uuid` over `data_device` (diskseal's or cryptsetup's,
// recognised by its dm UUID), or nullopt. Never an error where device-mapper is absent.
Result<std::optional<std::string>> ActiveMapping(const std::string& luks_uuid, const std::string& data_device);

// What the online run needs to load the volume again from disk (the guardian does).
struct VolumeRef {
  Env* env = nullptr;
  std::string device;  // data device path (a block device)
  std::string header;  // detached header path ("" when attached)
};

// Runs the operation recorded in `v` (loaded from `ref`) to its end, or to a stop, while `name`
// stays live. `keys`: digest -> key for every key the operation needs (borrowed, locked memory).
// `eo.gate` and `eo.in_use` are set here. Locks this process's memory for the run (no page fault
// may wait on the device being switched). Returns the engine's result; the mapping is restored
// (plain table of the header as it is on disk) before it returns, also on error.
// `name` is normally the volume's own mapping over `ref.device`; it may also be an adopted device
// (online/adopt.h: ref.device is NAME-dsraw) still on its original table, which is then switched
// to the header's table first, once the guardian runs.
// Precondition: the caller holds the device's claim (io/device_claim.h) with `name` allowed.
Status RunOnline(luks2::Volume& v, const VolumeRef& ref, const std::string& name,
                 const std::map<int, const SecureBuffer*>& keys, engine::EngineOptions eo);

// Restores `name` after an online run that ended without its guardian (both killed), or checks
// that nothing is left: see the file comment. ok when there is nothing to restore.
Status RestoreLeftovers(const VolumeRef& ref, const std::string& name,
                        const std::map<int, const SecureBuffer*>& keys, uint64_t hotzone_bytes);

}  // namespace ds::online
