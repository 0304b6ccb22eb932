// Online in-place operations through device-mapper: encrypt, decrypt or re-encrypt a volume while
// its mapping /dev/mapper/NAME stays live and mounted (README "Online").
//
// The stack (learned from cryptsetup's luks2_reencrypt.c, without its overlay device):
//   NAME          the user's mapping: the header's segments (done part in the new layout, the
//                 rest in the old one), and during a step the hotzone in the NEW layout over
//   NAME-dshz     a private dm-delay with no delay over the whole device: reads and writes go on
//                 to NAME-dshzq, flushes straight to the data device;
//   NAME-dshzq    a private dm-linear 1:1 over the data device, suspended while the engine
//                 rewrites the hotzone on the data device directly.
// Why two helpers: device-mapper sends a user's flush (every fsync) to every target of NAME, the
// hotzone's too; through a suspended helper it would wait for the step even when the data it
// makes durable is elsewhere. A flush has no data and only needs to reach the disk; the writes
// queued in NAME-dshzq have not completed, so no flush owes them durability. Where the kernel
// has no dm-delay, NAME-dshz is the linear helper and is held itself (flushes then wait).
// The layouts themselves are dm-crypt devices of their own, made once per run, under linear
// targets of NAME: NAME-dshzn (the new layout over NAME-dshz), NAME-dshzd (the new layout over the
// data device) and NAME-dshzo (the old layout over it), each only when that layout is crypt.
// Why: the kernel builds a dm-crypt target (its cipher, workqueues and thread) each time a table
// holding one is loaded, 8-20 ms of every step's table load in the QEMU guest, while users wait
// at the suspend that follows; a table of linear targets loads in about a millisecond. A segment
// a helper cannot express (another key, an IV that does not advance with the sector) keeps its
// crypt target in NAME's table. The guardian's restore gives NAME the header's own table (crypt
// over the data device, what cryptsetup makes) before the helpers are removed.
// Per hotzone (DmGate::Hold/Release around the engine's step):
//   1. load NAME's table with the hotzone mapped new over NAME-dshz (through NAME-dshzn when the
//      new layout is crypt); suspend NAME (waits for I/O in flight), suspend NAME-dshzq, resume
//      NAME: from now on users' writes into the hotzone
//      are encrypted with the new key and queue in NAME-dshzq, reads there wait; I/O elsewhere
//      and every flush flows.
//   2. the engine reads the zone from the data device (page cache dropped), writes its
//      resilience data, commits, transforms, writes, syncs, commits "done";
//   3. resume NAME-dshzq: the queued writes land after the rewrite (already in the new layout:
//      they win), queued reads see the new data.
// Only hotzone I/O waits, for one step; other I/O waits only while NAME switches tables.
//
// A guardian process (forked at Start, memory locked, signals ignored) restores the mapping when
// the run ends, however it ends: normal end, error, or kill -9 of the run. It reads the state from
// the kernel (which devices are suspended, which range of NAME goes over NAME-dshz) and the header
// from disk: a zone left held is first finished by the engine (its writes are queued in the new
// layout, so it must become new before they land), then NAME-dshzq is resumed and NAME gets the
// plain table of the header, and the helpers are removed. The same restoration runs in-process
// when a later run finds a helper left behind (the guardian killed too). If the zone cannot be
// finished (an I/O error), NAME-dshzq gets an error table instead, so that nothing waits forever.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "dm/dm.h"
#include "engine/engine.h"
#include "io/block_device.h"
#include "luks2/volume.h"
#include "util/secure_buffer.h"
#include "util/status.h"

namespace ds::online {

// The helper devices of NAME: the one NAME's hotzone maps over, and the queue held below it.
std::string HotzoneName(const std::string& name);
std::string QueueName(const std::string& name);
// NAME's crypt helpers (see the stack above): the new layout over NAME-dshz (the hotzone), the
// new layout over the data device (the part done), the old layout over the data device (the rest).
std::string HotNewName(const std::string& name);
std::string DoneName(const std::string& name);
std::string OldName(const std::string& name);

// A crypt helper as NAME's table uses it: /dev/mapper/<path> and its one dm-crypt target (over
// `seg.device`, or the data device when that is empty).
struct CryptHelper {
  std::string path;
  dm::Segment seg;
};
// `segs` (a table's segments) with each crypt segment that a helper covers (same cipher, key,
// sector size and device, inside its extent, the IV advancing with the sector) replaced by a
// linear segment onto that helper; other segments as they are. Pure: no kernel.
std::vector<dm::Segment> RouteOverCryptHelpers(const std::vector<dm::Segment>& segs,
                                               const std::vector<CryptHelper>& helpers);
// The mappings that hold NAME's data device while an online run (or its leftovers) is under
// NAME: NAME and its helpers. What a device claim for that run allows (io/device_claim.h).
std::vector<std::string> MappingHolders(const std::string& name);
// Whether `m` is an online run's helper (by its dm UUID): a holder to name only when no other is.
bool IsHelper(const dm::MappingInfo& m);
// The holder of a device worth naming to a user: the first that is not a helper (NAME rather
// than NAME-dshz), else the first. Precondition: `holders` is not empty.
const dm::MappingInfo& UserFacingHolder(const std::vector<dm::MappingInfo>& holders);

// The live LUKS2 mapping of the volume `luks_uuid` over `data_device` (diskseal's or cryptsetup's,
// recognised by its dm UUID), or nullopt. Never an error where device-mapper is absent.
// With `v` (that volume, loaded): also a prepared linear mapping (dm::kPreparedLinearUuidPrefix)
// over the device whose live table is v's (PreparedMappingFollows), i.e. one AdoptPreparedMapping
// switched earlier in this boot.
Result<std::optional<std::string>> ActiveMapping(const std::string& luks_uuid, const std::string& data_device,
                                                 luks2::Volume* v = nullptr);

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

// Removes the helpers among `holders` (a device's holders, dm::Holders) whose mapping is gone:
// an online run killed with its guardian and its mapping then closed by someone else (`cryptsetup
// close NAME`). With NAME gone nothing can be queued in them; a suspended one is resumed first.
// Returns whether it removed any. Helpers whose NAME exists are left alone (RestoreLeftovers).
Result<bool> RemoveOrphanedHelpers(const std::vector<dm::MappingInfo>& holders);

// Restores `name` after an online run that ended without its guardian (both killed), or checks
// that nothing is left: see the file comment. ok when there is nothing to restore.
Status RestoreLeftovers(const VolumeRef& ref, const std::string& name,
                        const std::map<int, const SecureBuffer*>& keys, uint64_t hotzone_bytes);

// --- the prepared root: a plain linear mapping adopted by a volume (README "The OS volume") ---
//
// diskseal's initramfs puts a root partition under a 1:1 dm-linear mapping at every boot
// ("prepared" mode). `enable --volume-type OS` then needs no reboot: once the volume's header
// (encryption recorded, nothing done) is in place, the live mapping is switched to the header's
// table with one load/suspend/resume, and the online run goes on under it. Its dm UUID stays
// DISKSEAL-LINEAR-... (the kernel never changes a UUID), so what makes it the volume's mapping is
// its table, checked against the header's segments before every use.

// One piece of a header's plaintext, in order, without keys: what the volume's table maps.
struct LayoutPiece {
  uint64_t sectors = 0;        // length in the plaintext (512-byte sectors)
  uint64_t device_sector = 0;  // where it starts on the data device
  bool crypt = false;          // dm-crypt; else linear (plaintext)
};
// The header's regular segments (backup segments skipped) as pieces. kUnsupported for a segment
// type that is neither crypt nor linear, kCorrupt for none.
Result<std::vector<LayoutPiece>> HeaderLayout(luks2::Volume& v);

// Whether `t` (a live table) is the 1:1 linear mapping of the whole device `dev` (`sectors` long):
// one linear target from 0 to the end at device offset 0, what the initramfs makes.
bool IsLinearOneToOne(const std::vector<dm::TargetInfo>& t, dev_t dev, uint64_t sectors);

// Whether `t` maps `layout` over `dev`: targets contiguous from 0 to the layout's end, each one
// inside a single piece of the same kind (crypt or linear) at the matching device offset. A
// target over one of `helpers` (an online run's helper devices, dm_online.h) may stand for any
// range: a run's routing, or a zone left held by a run killed with its guardian.
bool FollowsLayout(const std::vector<dm::TargetInfo>& t, const std::vector<LayoutPiece>& layout, dev_t dev,
                   const std::vector<dev_t>& helpers);
// The device numbers of NAME's online helpers that exist now (none: empty).
Result<std::vector<dev_t>> HelperDevices(const std::string& name);

// Switches the prepared linear mapping `name` over ref.device to v's table (one load, suspend,
// resume; `keys`: every key v's segments use). Refused (kBusy, nothing changed) unless `name` is
// a prepared linear mapping (its dm UUID) whose live table is the 1:1 linear table of the device
// while v maps the device as it is (nothing encrypted yet), or follows v's layout already (adopted
// earlier in this boot: switched again, which changes nothing). What an online run killed with
// its guardian left is restored first (RestoreLeftovers, `hotzone_bytes` as there). Afterwards
// ActiveMapping with `v` finds it. Precondition: the caller holds the device's claim with `name`
// and its helper allowed.
Status AdoptPreparedMapping(luks2::Volume& v, const VolumeRef& ref, const std::string& name,
                            const std::map<int, const SecureBuffer*>& keys, uint64_t hotzone_bytes);

}  // namespace ds::online
