#include "inplace/inplace.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "dm/dm.h"
#include "engine/binding.h"
#include "engine/engine.h"
#include "engine/volume_escrow.h"
#include "fuse/online_control.h"
#include "luks2/header_io.h"
#include "online/dm_online.h"
#include "vault/escrow.h"
#include "volume/signature.h"

namespace ds::inplace {

Result<std::string> EscrowNewHeader(Env& env, vault::VaultClient& client, const std::string& device,
                                    const std::string& temp_header, bool detached, const SecureBuffer& pass,
                                    const SecureBuffer& vk, const std::string& luks_uuid,
                                    const std::string& secret_name, const std::string& kek,
                                    const std::string& kek_alg, std::ostream& log) {
  vault::EscrowRequest req;
  req.luks_uuid = luks_uuid;
  req.secret_name = secret_name;
  req.kek = kek;
  req.kek_alg = kek_alg;
  auto rec = engine::EscrowNewVolume(env, client, device, temp_header, detached, pass, vk, req);
  if (!rec.ok()) return rec.status().WithContext(device + ": key escrow failed; nothing was written to the device");
  log << device << ": passphrase " << (detached ? "and header " : "") << "escrowed and verified as " << rec->secret_id
      << "\n";
  return rec->secret_id;
}

Result<Formatted> FormatAndEscrow(Env& env, const FormatRequest& r, std::ostream& log) {
  engine::Binding binding;
  luks2::FormatOptions f = r.format;
  {
    OpenOptions probe;
    probe.write = !r.device_mounted;
    probe.exclusive = !r.device_mounted;  // fails while anything still mounts or holds the device
    DS_ASSIGN_OR_RETURN(auto d, env.Open(r.device, probe));
    DS_ASSIGN_OR_RETURN(bool luks, luks2::HasLuksMagic(*d));
    if (luks) return Busy(r.device + ": already a LUKS volume; refusing to encrypt it again");
    if (d->Size() % 512)
      return InvalidArgument(r.device + ": size " + std::to_string(d->Size()) + " is not a multiple of 512 bytes");
    // The header records its device (engine/binding.h), so that a resume after a reboot that
    // renamed the disks cannot run this header over another one.
    DS_ASSIGN_OR_RETURN(binding, engine::PlaintextBinding(env, *d, r.device));
    // To be opened and encrypted online: the mapping's logical block size becomes the encryption
    // sector size, and a mounted filesystem must not see it grow past its own I/O unit (an ext4
    // with 1 KiB blocks aborts its journal on a 4 KiB device).
    if ((r.device_mounted || r.sector_for_online) && !f.sector_size) {
      Bytes first(size_t(std::min<uint64_t>(volume::kSignatureProbeBytes, d->Size())));
      DS_RETURN_IF_ERROR(d->ReadAt(0, first));
      auto sig = volume::ProbeSignature(first);
      const uint32_t unit = sig && sig->io_unit ? std::min<uint32_t>(sig->io_unit, 4096) : 512;
      for (f.sector_size = 512; f.sector_size * 2 <= unit;) f.sector_size *= 2;
    }
  }
  std::unique_ptr<vault::VaultClient> made;
  vault::VaultClient* client = r.vault;
  if (!client && r.connect) {
    DS_ASSIGN_OR_RETURN(made, r.connect());
    client = made.get();
  }
  if (!r.passphrase) return Internal(r.device + ": no passphrase source for the new header");
  DS_ASSIGN_OR_RETURN(SecureBuffer pass, r.passphrase());
  DS_ASSIGN_OR_RETURN(uint32_t digest_iters, luks2::ChooseDigestIterations(f.pbkdf));
  if (env.Exists(r.temp_header)) DS_RETURN_IF_ERROR(env.Remove(r.temp_header));
  Formatted out;
  out.digest = -1;
  auto hook = [&](luks2::Metadata& md, const SecureBuffer& key) -> Status {
    DS_RETURN_IF_ERROR(engine::InitEncrypt(md, key, r.resilience, digest_iters, r.resilience_hash));
    engine::WriteBinding(md, binding);
    out.digest = 0;  // InitEncrypt's digest of the new key
    return Status::Ok();
  };
  f.offset_sectors = 0;
  auto v = luks2::Volume::Format(env, r.device, r.temp_header, f, pass.span(), hook, &out.volume_key);
  if (!v.ok()) {
    (void)env.Remove(r.temp_header);
    return v.status().WithContext(r.device + ": encrypt");
  }
  out.uuid = v->metadata().uuid;
  if (!client) return out;
  // Escrowed, read back, unwrapped and checked against this header while it is still a temp file,
  // the versions pinned in it: if any of it fails no data block has been touched.
  const std::string name = r.secret_name ? r.secret_name(out.uuid) : vault::DefaultSecretName(out.uuid);
  auto id = EscrowNewHeader(env, *client, r.device, r.temp_header, r.escrow_header, pass, out.volume_key, out.uuid,
                            name, r.kek, r.kek_alg, log);
  if (!id.ok()) {
    (void)env.Remove(r.temp_header);
    return id.status();
  }
  out.secret_id = *id;
  return out;
}

Result<DecryptInitResult> InitDecrypt(Env& env, const InitDecryptRequest& r) {
  DecryptInitResult out;
  DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(env, r.device, r.header, true));
  if (r.bind) DS_RETURN_IF_ERROR(engine::CheckBindingKeyless(env, v, r.header));
  DS_ASSIGN_OR_RETURN(auto st, engine::ReadState(v.metadata(), v.data_device().Size()));
  if (st) {
    out.state = DecryptInit::kInProgress;
    return out;
  }
  if (luks2::Segments(v.metadata()).front().type == "linear") {
    out.state = DecryptInit::kPlaintext;
    return out;
  }
  DS_RETURN_IF_ERROR(v.CheckRequirements());
  if (!r.unlock) return Internal(r.device + ": no key source for the decryption");
  DS_ASSIGN_OR_RETURN(luks2::Volume::Unlocked u, r.unlock(v));
  std::optional<engine::Binding> binding;
  if (r.bind) {
    const KeyMap keys = {{u.digest, &u.key}};
    DS_RETURN_IF_ERROR(engine::CheckBindingUnlocked(v, r.header, keys));
    DS_ASSIGN_OR_RETURN(binding, engine::CurrentBinding(env, v, keys));
  }
  DS_ASSIGN_OR_RETURN(uint32_t iters, luks2::ChooseDigestIterations(r.pbkdf));
  if (binding) engine::WriteBinding(v.mutable_metadata(), *binding);
  DS_RETURN_IF_ERROR(engine::InitDecrypt(v.mutable_metadata(), u.key, r.resilience, iters, r.resilience_hash).WithContext(r.device));
  DS_RETURN_IF_ERROR(v.Commit());  // one header write: the plain header or the in-progress one
  out.unlocked.emplace(std::move(u));
  return out;
}

std::string TempHeaderPath(const std::string& header, bool header_is_device) {
  if (!header_is_device) return header + ".diskseal-new";
  std::error_code ec;
  std::string dir = std::filesystem::temp_directory_path(ec).string();
  if (ec || dir.empty()) dir = "/tmp";
  return dir + "/diskseal-header-" + std::to_string(::getpid()) + ".new";
}

namespace {

// Everything but the first 4 KiB (the primary copy's binary header, whose magic makes the device
// a header), a sync, then those 4 KiB and a sync.
Status CopyOntoHeaderDevice(Env& env, const std::string& tmp, const std::string& dev) {
  DS_ASSIGN_OR_RETURN(auto src, env.Open(tmp, OpenOptions{}));
  OpenOptions rw;
  rw.write = true;
  DS_ASSIGN_OR_RETURN(auto dst, env.Open(dev, rw));
  const uint64_t n = src->Size();
  if (dst->Size() < n)
    return InvalidArgument(dev + ": the header device has " + std::to_string(dst->Size()) + " bytes, the header needs " +
                           std::to_string(n));
  Bytes all(n);
  DS_RETURN_IF_ERROR(src->ReadAt(0, all));
  constexpr uint64_t kFirst = 4096;
  DS_RETURN_IF_ERROR(dst->WriteAt(kFirst, std::span<const uint8_t>(all.data() + kFirst, n - kFirst)));
  DS_RETURN_IF_ERROR(dst->Sync());
  DS_RETURN_IF_ERROR(dst->WriteAt(0, std::span<const uint8_t>(all.data(), kFirst)));
  return dst->Sync();
}

// The offline engine rewrites the raw device: never while a mapping that is not the volume's own
// (ActiveMapping finds that one by the header's UUID, and the run goes online under it) reads
// and writes the device above it, which would see ciphertext appear below. A second line of
// defence behind the callers' device claims, which may allow a mapping by name.
Status RefuseUnderForeignMapping(const std::string& device) {
  if (!dm::Available()) return Status::Ok();
  struct stat st;
  if (::stat(device.c_str(), &st) != 0 || !S_ISBLK(st.st_mode)) return Status::Ok();
  DS_ASSIGN_OR_RETURN(auto holders, dm::Holders(st.st_rdev));
  if (holders.empty()) return Status::Ok();
  return Busy(device + ": held by the mapping /dev/mapper/" + online::UserFacingHolder(holders).name +
              ", which is not this volume's; refusing to rewrite the device under it");
}

}  // namespace

Status PlaceHeader(Env& env, const std::string& temp_header, const std::string& header, bool header_is_device) {
  if (!header_is_device) return env.Rename(temp_header, header);
  Status placed = CopyOntoHeaderDevice(env, temp_header, header);
  (void)env.Remove(temp_header);
  return placed;
}

Status RunOperation(Env& env, const RunRequest& r, std::ostream& log, RunOutcome* out) {
  RunOutcome scratch;
  RunOutcome& o = out ? *out : scratch;
  o = RunOutcome{};
  DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(env, r.device, r.header, true));
  o.loaded = true;
  if (r.check) DS_RETURN_IF_ERROR(r.check(v));
  // The recorded device may have been renamed since (a reboot): the header must still be its.
  DS_RETURN_IF_ERROR(engine::CheckBindingKeyless(env, v, r.header));
  DS_ASSIGN_OR_RETURN(auto st, engine::ReadState(v.metadata(), v.data_device().Size()));
  if (!st) return engine::FinishPendingWipe(v);  // a run cut short after its final commit
  o.had_operation = true;
  o.mode = st->mode;
  o.data_size = st->data_size;
  o.done_before = st->done;
  o.moves_data = st->moved || st->shift || st->decrypt_shift();
  KeyMap keys;
  if (r.known) {
    keys = *r.known;
  } else {
    if (!r.unlock) return Internal(r.device + ": no key source for the operation");
    DS_ASSIGN_OR_RETURN(o.unlocked, r.unlock(v));
    for (auto& [digest, key] : o.unlocked) keys[digest] = &key;
  }
  // Before the engine writes anything (its first act may be a hotzone recovery).
  DS_RETURN_IF_ERROR(engine::CheckBindingUnlocked(v, r.header, keys));
  if (r.prepare_only) return Status::Ok();
  // The volume's own mapping is live (open, perhaps mounted): the operation runs under it; also
  // a prepared linear mapping whose table is this header's (online/dm_online.h, the OS volume).
  // An error finding it is returned: running offline under a live mapping would lose its writes.
  if (!r.mapping.empty()) {
    DS_ASSIGN_OR_RETURN(auto named, dm::Find(r.mapping));
    if (!named) return NotFound(r.device + ": /dev/mapper/" + r.mapping + " is not open");
    o.mapping = r.mapping;
  } else {
    DS_ASSIGN_OR_RETURN(auto live, online::ActiveMapping(v.metadata().uuid, r.device, &v));
    if (live) o.mapping = *live;
  }
  // A data shift (the header at the start, encrypt or decrypt) writes the data at another offset
  // than the live table maps it: refused before the run touches the mapping or the device.
  if (!o.mapping.empty() && o.moves_data)
    return Busy(r.device + ": /dev/mapper/" + o.mapping + " is open, and this " + engine::ModeName(st->mode) +
                " moves the data (header at the start of the device), which cannot be done under a live mapping; "
                "close it (`diskseal close " + o.mapping + "`) and run the command again");
  Progress p(r.progress_out, r.progress_mode, r.progress_label.empty() ? engine::ModeName(st->mode) : r.progress_label,
             st->data_size, st->done);
  if (r.observer) p.SetObserver(r.observer);
  engine::EngineOptions eo;
  eo.hotzone_bytes = r.hotzone_bytes;
  eo.threads = r.threads;
  eo.stop = r.stop;
  eo.stop_after = r.stop_after;
  eo.progress = &p;
  if (!o.mapping.empty() && r.announce_online)
    log << r.device << ": " << engine::ModeName(st->mode) << " runs online under /dev/mapper/" << o.mapping << "\n";
  // Open in userspace: the daemon serving the view runs the operation (fuse/online_control.h).
  std::optional<fuse::Mapping> served;
  if (r.run_dir) {
    DS_ASSIGN_OR_RETURN(served, fuse::ServingDaemon(*r.run_dir, r.device, r.header));
  }
  o.in_daemon = served.has_value();
  if (o.mapping.empty() && !served) DS_RETURN_IF_ERROR(RefuseUnderForeignMapping(r.device));
  if (served && r.announce_online)
    log << r.device << ": " << engine::ModeName(st->mode) << " runs online in the daemon serving " << served->file << "\n";
  o.started = true;
  Status s = served ? fuse::RunInDaemon(*r.run_dir, *served, keys, {r.hotzone_bytes, r.threads, r.stop_after}, &p, r.stop)
             : o.mapping.empty() ? engine::RunOperation(v, keys, eo)
                                 : online::RunOnline(v, {&env, r.device, r.header}, o.mapping, keys, eo);
  if (!s.ok()) return s;
  p.Finish();
  return Status::Ok();
}

Status EscrowFinalHeader(Env& env, const FinalEscrowRequest& r, std::ostream& log) {
  DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(env, r.device, r.header, true));
  // A new volume key: the header in the vault (if any) opens the old one. Marked, and escrowed
  // again below when there is a vault, else the note names the command.
  if (r.new_volume_key) DS_RETURN_IF_ERROR(engine::MarkHeaderEscrowStale(v));
  if (!engine::FinalHeaderEscrowPending(v.metadata())) return Status::Ok();
  if (!r.vault && !r.connect) {
    log << r.no_vault_note << "\n";
    return Status::Ok();
  }
  std::optional<luks2::Volume::Unlocked> unlocked;
  const SecureBuffer* key = nullptr;
  if (r.keys) {
    auto digest = luks2::DigestOfSegment(v.metadata(), 0);
    auto k = digest ? r.keys->find(digest->id) : r.keys->end();
    if (k != r.keys->end()) key = k->second;
  }
  if (!key && r.pass) {
    DS_ASSIGN_OR_RETURN(luks2::Volume::Unlocked u, v.Unlock(r.pass->span()));
    unlocked.emplace(std::move(u));
    key = &unlocked->key;
  }
  if (!key) return Internal(r.device + ": no volume key for the final segment");
  std::unique_ptr<vault::VaultClient> made;
  vault::VaultClient* client = r.vault;
  if (!client) {
    DS_ASSIGN_OR_RETURN(made, r.connect());
    client = made.get();
  }
  return engine::EscrowFinalHeaderIfPending(*client, v, *key, log).WithContext(r.failure_context);
}

}  // namespace ds::inplace
