// How much of its memory an online run locks (online/dm_online.cc, RunOnline).
//
// While a zone is held, any I/O to the volume's mapping, or to a device stacked on it, waits for
// this process. A page fault on a file that lives there (the binary itself when the volume is
// root) would wait for the zone this process holds: a deadlock. So when any file this process
// maps may live on the volume, every mapped page is made resident and locked up front
// (mlockall(MCL_CURRENT)), as every run did before. Otherwise that is ~25 MiB of shared libraries
// (most pulled in by libcurl, unused online) locked for nothing: only the pages already in memory
// and those touched from now on are locked (MCL_ONFAULT), and a fault elsewhere reads from a
// device the run never holds. Any doubt counts as "may live on the volume".
#pragma once

#include <sys/types.h>

#include <functional>
#include <optional>
#include <string>

namespace ds {
class Env;
}

namespace ds::online {

enum class LockScope {
  kAll,      // every mapped page resident and locked now
  kOnFault,  // pages in memory now and those touched later
};

struct LockDecision {
  LockScope scope = LockScope::kAll;
  std::string why;  // one phrase, for the timing output
};

// The facts the decision reads, gathered by LockScopeFor (or given by a test).
struct LockInputs {
  std::string maps;       // /proc/self/maps
  std::string mountinfo;  // /proc/self/mountinfo
  std::string swaps;      // /proc/swaps
  // Whether I/O to block device `dev` may wait for the volume: the volume's mapping itself, a
  // device stacked on it (an LV, an md array, a dm device over it), or a loop device (or one of
  // its partitions), whose backing file may be on the volume.
  std::function<bool(dev_t)> may_wait_for_volume;
  // The device number of a block device path (a mount's source), or nullopt.
  std::function<std::optional<dev_t>(const std::string&)> block_device;
};

// kAll when swap is active (a swapped-out page is read back from wherever the swap lives), or
// any file mapping lies on a device for which may_wait_for_volume holds, or on a filesystem
// without a block device that is not memory-backed (overlay, NFS, FUSE ...), or on btrfs (its
// device numbers are its own; it may span several devices), or on anything the inputs cannot
// place; else kOnFault. Pure: no I/O.
LockDecision DecideLockScope(const LockInputs& in);

// Whether a mapped file is one the run executes from, whole (kOnFault makes these resident and
// locked up front all the same: faulting in AES or the engine's code during the first held zone
// lengthened that step, and users' waits, by ~30 ms in the QEMU guest). `path` as in maps.
bool RunsFrom(const std::string& path, const std::string& self_exe);

// Locks the memory of an online run as `d` says (mlockall; for kOnFault also the files RunsFrom
// names, mlock). Returns the errno of a failed lock, 0 on success.
int LockMemory(Env& env, const LockDecision& d);

// The decision for this process and the volume's mapping `top` (its device number): reads
// /proc/self/{maps,mountinfo}, /proc/swaps and sysfs (holders, loop devices) through `env`.
// kAll if any read fails. Call it before anything is held: it reads files and allocates.
LockDecision LockScopeFor(Env& env, dev_t top);

}  // namespace ds::online
