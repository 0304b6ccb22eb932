// Online operations on a filesystem mounted from a device-mapper device that is not diskseal's
// (an LVM logical volume: dm-linear over a physical volume), with no unmount and no remount
// (README "Online", "Logical volumes").
//
// The filesystem's block device stays the dm device LV (/dev/mapper/vg-lv: its dev_t, its mount,
// its open files never change). diskseal adopts it:
//   LV-dsraw  a private dm device with a copy of LV's table (the same linear targets over the
//             physical volumes): the raw data device the engine reads and writes, as the online
//             engine's VolumeRef::device (dm_online.h);
//   LV        the volume's mapping: RunOnline, once its guardian runs, loads the header's table
//             over LV-dsraw into it (suspend, load, resume: only the I/O in flight is waited
//             for), and from then on works under it exactly as under /dev/mapper/<uuid>.
// The two tables are the same blocks, so the switch changes no byte the filesystem sees. After the
// encryption LV stays the crypt mapping over LV-dsraw until the next boot, when LVM activates LV as
// before and crypttab opens /dev/mapper/<uuid> over it with the detached header. A decryption
// under the adopted LV ends with Release: LV's original table (the one LV-dsraw holds) goes back and
// LV-dsraw is removed.
//
// Only tables of linear targets are adopted: a copy of a thin, snapshot, raid, mirror or cache
// target would be a second owner of the target's metadata. Tables are compared in full (device,
// offset, length of every target) before anything is switched.
//
// Threading: none; call from the single thread that runs the operation. Preconditions: root,
// device-mapper available, the machine lock (machine/state.h) held by the caller.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "dm/dm.h"
#include "util/status.h"

namespace ds::online {

// The raw device of an adopted NAME: NAME-dsraw, and its path.
std::string RawName(const std::string& name);
std::string RawPath(const std::string& name);

// Why the dm device `m` with the live table `t` cannot be adopted (the rule, in words), or "" when
// it can: a diskseal or LUKS mapping, a suspended or read-only device, no table, or a target other
// than linear. Pure.
std::string AdoptRefusal(const dm::MappingInfo& m, const std::vector<dm::TargetInfo>& t);

// The dm device at `device` (a path) when it is one diskseal would adopt rather than map over:
// a dm device whose UUID is not diskseal's or cryptsetup's (LVM-..., or none). nullopt otherwise
// (not a block device, not dm, no device-mapper).
Result<std::optional<std::string>> ForeignMappingAt(const std::string& device);

// AdoptRefusal for the device at `device`: "" when it is no foreign dm device or can be adopted.
Result<std::string> AdoptRefusalAt(const std::string& device);

// True when NAME is adopted (NAME-dsraw exists).
Result<bool> Adopted(const std::string& name);

// Makes NAME-dsraw a copy of NAME's table; NAME itself is not changed. Idempotent: an existing
// NAME-dsraw must be that copy, or NAME must be over it already (an earlier run switched it).
// kUnsupported "DEVICE: <rule>" for a device AdoptRefusal refuses, nothing made.
Status PrepareRaw(const std::string& device, const std::string& name);

// Puts NAME's original table (NAME-dsraw's) back and removes NAME-dsraw. Precondition: NAME is
// the plaintext 1:1 over NAME-dsraw (a finished decryption); refused with
// nothing changed otherwise (kBusy). Ok when NAME is not adopted.
Status Release(const std::string& name);

// The path of the block device `dev` (/dev/<DEVNAME> from sysfs), for tables built from a live one.
Result<std::string> DevicePath(dev_t dev);

}  // namespace ds::online
