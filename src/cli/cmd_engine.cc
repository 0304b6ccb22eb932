// In-place operations: encrypt (and resume). Progress on stderr; SIGINT/SIGTERM stop at the next
// commit point and leave a resumable volume.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/luks_options.h"
#include "engine/binding.h"
#include "engine/datashift.h"
#include "engine/engine.h"
#include "engine/reencrypt_state.h"
#include "crypto/crypto.h"
#include "cli/vault_options.h"
#include "cli/claim.h"
#include "luks2/header_io.h"
#include "vault/escrow.h"
#include "engine/volume_escrow.h"
#include "inplace/inplace.h"
#include "util/process.h"
#include "fuse/run_dir.h"
#include "volume/signature.h"

#include <algorithm>


namespace ds::cli {

namespace {

std::atomic<bool> g_stop{false};

void OnSignal(int) { g_stop.store(true); }

void CatchStopSignals() {
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

struct EngineArgs {
  uint64_t hotzone = 32u << 20;
  bool progress_json = false;
  unsigned threads = 0;
  uint64_t stop_after = 0;
  bool init_only = false;
  std::string run_dir = "/run/diskseal";
};

void AddEngineOptions(CLI::App& app, EngineArgs& e) {
  app.add_flag("--init-only", e.init_only,
               "only write the header with the operation recorded (nothing transformed yet, cryptsetup's "
               "`reencrypt --init-only`); `open` then activates it and `resume` carries it on, online while it is open "
               "(not with the header at the start where the data moves: that runs closed)");
  AddHotzoneSizeOption(app, e.hotzone, "memory for data buffers (default 32M): two hotzones of half this each (journal mode caps them at its area); with --reduce-device-size R one hotzone of R/2 instead");
  app.add_flag("--progress-json", e.progress_json, "progress as JSON lines on stderr");
  app.add_option("--threads", e.threads, "encryption threads (default: one per core)");
  app.add_option("--run-dir", e.run_dir, "userspace views (default /run/diskseal): a volume open there runs its "
                 "operation inside its serving daemon, online");
  AddSizeOption(app, "--stop-after", e.stop_after,
                "stop at the first commit point after this many bytes (exit 9, resumable): work in windows");
}

// --resilience and --resilience-hash, as cryptsetup spells them (the hash matters to checksum
// resilience only and is ignored with the others, as there).
struct ResilienceArgs {
  std::string mode = "checksum";
  std::string hash;  // empty: engine::DefaultChecksumHash()
  CLI::Option* mode_opt = nullptr;
  // Both checked before anything is claimed, asked or written.
  Result<engine::Resilience> Parse(const std::string& dev) const {
    DS_ASSIGN_OR_RETURN(engine::Resilience r, engine::ParseResilience(mode));
    if (!hash.empty()) DS_RETURN_IF_ERROR(engine::ParseChecksumHash(hash).status().WithContext(dev));
    return r;
  }
};

void AddResilienceOptions(CLI::App& app, ResilienceArgs& r, const std::string& modes) {
  r.mode_opt = app.add_option("--resilience", r.mode, modes);
  app.add_option("--resilience-hash", r.hash,
                 "hash of checksum resilience: md5, sha1, sha256, sha512, blake2b-512, blake2s-256 (default: "
                 "sha256 as cryptsetup, or md5 where it is 1.5x faster here; see `diskseal benchmark`)");
}

Status FinishHeaderEscrow(Globals& g, const DeviceArgs& d, const VaultOptions* vo, const inplace::KeyMap* keys,
                          const SecureBuffer* pass, bool new_volume_key);

// The exact command that continues this volume's operation: its device, header, key source and
// vault flags (paths and names only, never a key).
std::string ContinueCommand(const DeviceArgs& d, const KeySource& keys, const VaultOptions* vo) {
  std::string c = "diskseal resume " + d.device;
  if (!d.header.empty()) c += " --header " + d.header;
  if (!keys.key_file.empty()) c += " --key-file " + keys.key_file;
  if (keys.keyfile_offset) c += " --keyfile-offset " + std::to_string(keys.keyfile_offset);
  if (keys.keyfile_size) c += " --keyfile-size " + std::to_string(keys.keyfile_size);
  if (vo && vo->enabled()) {
    c += " --vault " + vo->url;
    if (!vo->token_file.empty()) c += " --vault-token-file " + vo->token_file;
    if (!vo->token_env.empty()) c += " --vault-token-env " + vo->token_env;
    if (!vo->ca_file.empty()) c += " --vault-ca " + vo->ca_file;
    if (!vo->secret_name.empty()) c += " --vault-secret-name " + vo->secret_name;
  }
  return c;
}

// The engine's stop message, ending in the command that continues (the engine knows no flags).
Status NameTheContinuation(const Status& s, const DeviceArgs& d, const KeySource& keys, const VaultOptions* vo) {
  std::string m = s.message();
  const std::string generic = " and resumes with `diskseal resume`";
  if (size_t at = m.rfind(generic); at != std::string::npos) m.erase(at);
  return Status(s.code(), m + "; continue with `" + ContinueCommand(d, keys, vo) + "`");
}

// Loads the volume with its operation, unlocks, and runs it to the end (inplace/inplace.h).
Status ResumeOperation(Globals& g, const DeviceArgs& d, const KeySource& keys, const EngineArgs& e,
                       const SecureBuffer* known_key, int known_digest,
                       const SecureBuffer* known_pass = nullptr, const VaultOptions* vo = nullptr) {
  inplace::KeyMap known;
  if (known_key) known[known_digest] = known_key;
  fuse::RunDir run(*g.env, e.run_dir);
  CatchStopSignals();
  inplace::RunRequest rq;
  rq.device = d.device;
  rq.header = d.header;
  if (known_key) rq.known = &known;
  rq.unlock = [&](luks2::Volume& v) -> Result<std::map<int, SecureBuffer>> {
    if (known_pass) return v.UnlockAll(known_pass->span());
    return WithTries<std::map<int, SecureBuffer>>(
        *g.err, keys, vo && vo->enabled(), [&] { return ObtainPassphrase(*g.env, keys, vo, v.metadata(), d.device); },
        [&](const SecureBuffer& pass) { return v.UnlockAll(pass.span()); });
  };
  rq.check = [&](const luks2::Volume& v) { return CheckCryptsetupReencrypt(v.metadata(), d.device); };
  rq.prepare_only = e.init_only;
  rq.hotzone_bytes = e.hotzone;
  rq.threads = e.threads;
  rq.stop_after = e.stop_after;
  rq.stop = &g_stop;
  rq.progress_out = g.err;
  rq.progress_mode = Progress::AutoMode(isatty(2), e.progress_json);
  rq.run_dir = &run;
  rq.announce_online = true;
  inplace::RunOutcome out;
  Status s = inplace::RunOperation(*g.env, rq, *g.err, &out);
  if (!out.loaded && d.header.empty() && s.code() == Code::kCorrupt)
    return Status(Code::kCorrupt, s.message() +
                                      "; if `encrypt --reduce-device-size` was interrupted while it placed the header, "
                                      "run that same command again (it finds the staged header; resume cannot know the size)");
  if (s.code() == Code::kInterrupted) return NameTheContinuation(s, d, keys, vo);
  DS_RETURN_IF_ERROR(s);
  if (!out.had_operation) {
    if (!d.header.empty() && vo && vo->enabled()) {
      DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(*g.env, d.device, d.header, true));
      if (engine::FinalHeaderEscrowPending(v.metadata())) {
        // The encryption finished but its final header never reached the vault: do that now.
        DS_ASSIGN_OR_RETURN(SecureBuffer pass, ObtainPassphrase(*g.env, keys, vo, v.metadata(), d.device));
        return FinishHeaderEscrow(g, d, vo, nullptr, &pass, false);
      }
    }
    *g.out << d.device << ": no in-place operation to resume.\n";
    return Status::Ok();
  }
  if (e.init_only) {
    *g.out << d.device << ": " << engine::ModeName(out.mode) << " initialised (" << out.done_before << " of "
           << out.data_size << " bytes done); "
           << (out.moves_data ? "run `" + ContinueCommand(d, keys, vo) +
                                    "` to carry it on with the volume closed (the data moves: not online)"
                              : "open it and run `" + ContinueCommand(d, keys, vo) +
                                    "` to carry it on (online while it is open)")
           << "\n";
    return Status::Ok();
  }
  *g.out << d.device << ": " << engine::ModeName(out.mode) << " finished (" << out.data_size - out.done_before
         << " bytes this run).\n";
  if (d.header.empty()) return Status::Ok();
  inplace::KeyMap used = known;
  for (auto& [digest, key] : out.unlocked) used[digest] = &key;
  // A reencrypt's new volume key: the header in the vault (if any) opens the old one; it is marked
  // and escrowed again when the vault flags are here, else the note names the command.
  return FinishHeaderEscrow(g, d, vo, &used, nullptr, out.mode == engine::Mode::kReencrypt);
}


// Where `device` is mounted (from /proc/self/mounts), or empty.
std::string MountPointOf(Env& env, const std::string& device) {
  auto mounts = env.ReadFile("/proc/self/mounts", 4u << 20);
  if (!mounts.ok()) return "";
  std::error_code ec;
  const std::string want = std::filesystem::weakly_canonical(device, ec).string();
  std::istringstream in(*mounts);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string src, where;
    f >> src >> where;
    if (src == device || (!want.empty() && src == want)) return where;
  }
  return "";
}

// After an operation finished: escrows the final header when the vault holds only the one made
// before the first data block (inplace/inplace.h). Without --vault it says which command does it.
Status FinishHeaderEscrow(Globals& g, const DeviceArgs& d, const VaultOptions* vo, const inplace::KeyMap* keys,
                          const SecureBuffer* pass, bool new_volume_key) {
  inplace::FinalEscrowRequest rq;
  rq.device = d.device;
  rq.header = d.header;
  if (vo && vo->enabled()) rq.connect = [&] { return MakeVaultClient(*g.env, *vo); };
  rq.keys = keys;
  rq.pass = pass;
  rq.new_volume_key = new_volume_key;
  rq.no_vault_note = d.device + ": the vault holds a header escrowed before this operation finished; run `diskseal resume " +
                     d.device + " --header " + d.header + " --vault URL ...` to escrow the final one";
  rq.failure_context = d.device + ": the data is encrypted, but the final header was not escrowed; run `diskseal resume " +
                       d.device + " --header " + d.header + " --vault ...` to escrow it";
  return inplace::EscrowFinalHeader(*g.env, rq, *g.err);
}

struct ShiftArgs {
  uint64_t reduce = 0;
  bool resize_fs = false;
};

// encrypt DEVICE --reduce-device-size R: the header at the start (cryptsetup's layout, shift
// R/2), the data shifted by R/2, the last R/2 bytes holding the moved copy while it runs.
// Running it again resumes, including a run interrupted while the header was being placed.
Status EncryptShift(Globals& g, const DeviceArgs& da, const KeySource& keys, luks2::FormatOptions f,
                    const EngineArgs& e, const ShiftArgs& sa, VaultOptions& vault_opts) {
  const std::string& dev = da.device;
  const uint64_t r = sa.reduce, shift = r / 2;
  const uint64_t min_r = 2 * (2 * f.metadata_size + (64u << 10));
  if (r % 8192 || r < min_r)
    return InvalidArgument(dev + ": --reduce-device-size " + std::to_string(r) + " must be a multiple of 8 KiB of at least " +
                           std::to_string(min_r) + " bytes (" + std::to_string(min_r >> 10) +
                           "k: half of it holds the header, two metadata copies and a keyslot; e.g. 8M or 32M)");
  if (std::string mp = MountPointOf(*g.env, dev); !mp.empty())
    return Busy(dev + ": mounted on " + mp + "; unmount it first");
  OpenOptions rw;
  rw.write = true;
  rw.exclusive = true;
  uint64_t size = 0;
  {
    DS_ASSIGN_OR_RETURN(auto d, g.env->Open(dev, rw));
    size = d->Size();
    if (size % 4096)
      return InvalidArgument(dev + ": size " + std::to_string(size) + " is not a multiple of 4096 bytes");
    if (size < r + shift)
      return InvalidArgument(dev + ": " + std::to_string(size) + " bytes is too small for --reduce-device-size " +
                             std::to_string(r) + ": the device needs at least " + std::to_string(r + shift) +
                             " bytes (the reduction plus half of it again, which the data keeps)");
    DS_ASSIGN_OR_RETURN(engine::ShiftStart start, engine::RecoverShiftHeader(*d, shift));
    if (start != engine::ShiftStart::kNothing) {
      d.reset();
      DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(*g.env, dev, "", true));
      DS_ASSIGN_OR_RETURN(auto st, engine::ReadState(v.metadata(), v.data_device().Size()));
      if (!st) {
        DS_RETURN_IF_ERROR(engine::FinishPendingWipe(v));  // a run cut short after its final commit
        return Busy(dev + ": already encrypted (a finished LUKS2 header is at its start)");
      }
      if (start == engine::ShiftStart::kRestored)
        *g.err << dev << ": finished placing the header of an interrupted run\n";
      return ResumeOperation(g, da, keys, e, nullptr, -1, nullptr, &vault_opts);
    }
    DS_ASSIGN_OR_RETURN(bool luks, luks2::HasLuksMagic(*d));
    if (luks) return Busy(dev + ": already a LUKS volume; refusing to encrypt it again");
  }
  // The last R bytes must hold nothing: a filesystem claiming them would lose its end.
  const uint64_t data_size = size - r;
  for (int attempt = 0;; ++attempt) {
    DS_ASSIGN_OR_RETURN(auto d, g.env->Open(dev, OpenOptions{}));
    DS_ASSIGN_OR_RETURN(auto fs, engine::ProbeFilesystem(*d));
    if (!fs || fs->size <= data_size) break;
    const bool ext = fs->type.rfind("ext", 0) == 0;
    if (!sa.resize_fs || !ext || attempt > 0)
      return InvalidArgument(dev + ": the " + fs->type + " filesystem on it is " + std::to_string(fs->size) +
                             " bytes and reaches into the last " + std::to_string(r) +
                             " bytes that --reduce-device-size frees (it must end by " + std::to_string(data_size) +
                             "); shrink it first" + (ext && attempt == 0 ? " or pass --resize-fs" : ""));
    d.reset();
    *g.err << dev << ": shrinking the " << fs->type << " filesystem to " << data_size << " bytes\n";
    DS_ASSIGN_OR_RETURN(int fsck, RunProgram({"e2fsck", "-f", "-y", dev}));
    if (fsck > 1) return Status(Code::kIOError, dev + ": e2fsck -f -y failed (exit " + std::to_string(fsck) + ")");
    DS_ASSIGN_OR_RETURN(int rs, RunProgram({"resize2fs", dev, std::to_string(data_size / 1024) + "K"}));
    if (rs != 0) return Status(Code::kIOError, dev + ": resize2fs failed (exit " + std::to_string(rs) + ")");
    // resize2fs also shortens an image file to the new filesystem size; the freed tail is where
    // the header image and the moved copy go, so the file gets its size back.
    std::error_code ec;
    if (std::filesystem::is_regular_file(dev, ec)) {
      DS_ASSIGN_OR_RETURN(int tr, RunProgram({"truncate", "-s", std::to_string(size), dev}));
      if (tr != 0) return Status(Code::kIOError, dev + ": could not restore the image file's size after resize2fs");
    }
  }
  std::unique_ptr<vault::VaultClient> client;
  if (vault_opts.enabled()) {
    DS_ASSIGN_OR_RETURN(client, MakeVaultClient(*g.env, vault_opts));
  }
  SecureBuffer pass;
  if (client && keys.key_file.empty()) {
    DS_ASSIGN_OR_RETURN(pass, vault::GeneratePassphrase());
  } else {
    DS_ASSIGN_OR_RETURN(pass, ReadKey(*g.env, keys, "Enter new passphrase for " + dev + ": ", true));
  }
  DS_ASSIGN_OR_RETURN(uint32_t digest_iters, luks2::ChooseDigestIterations(f.pbkdf));
  // The header image is built completely (with the operation recorded in it) in a private temp
  // file, then placed in one crash-safe procedure (engine/datashift.h).
  f.offset_sectors = shift / 512;
  if (!f.keyslots_size) f.keyslots_size = std::min<uint64_t>(shift - 2 * f.metadata_size, 128u << 20) / 4096 * 4096;
  if (!f.sector_size) f.sector_size = 4096;
  // Named after the device, so that a run killed while the file existed has its leftover
  // removed by the next run.
  std::error_code ec;
  const std::string canon = std::filesystem::weakly_canonical(dev, ec).string();
  DS_ASSIGN_OR_RETURN(Bytes tag, Hash("sha256", AsBytes(canon.empty() ? dev : canon)));
  // In memory (/dev/shm) where there is one: the image is made, synced and read back at once.
  const std::filesystem::path tmp_dir =
      std::filesystem::is_directory("/dev/shm", ec) ? std::filesystem::path("/dev/shm") : std::filesystem::temp_directory_path(ec);
  const std::string tmp = (tmp_dir /
                           ("diskseal-" + HexEncode(std::span<const uint8_t>(tag).first(8)) + "-header.new")).string();
  if (g.env->Exists(tmp)) DS_RETURN_IF_ERROR(g.env->Remove(tmp));
  SecureBuffer vk;
  Bytes image;  // the header image without its trailing zeros
  {
    auto hook = [&](luks2::Metadata& md, const SecureBuffer& key) {
      return engine::InitEncryptShift(md, key, shift, data_size, size, digest_iters);
    };
    auto v = luks2::Volume::Format(*g.env, dev, tmp, f, pass.span(), hook, &vk);
    if (!v.ok()) {
      (void)g.env->Remove(tmp);
      return v.status().WithContext(dev + ": encrypt");
    }
    Status ok = Status::Ok();
    if (client) {
      const std::string uuid = v->metadata().uuid;
      ok = inplace::EscrowNewHeader(*g.env, *client, dev, tmp, false, pass, vk, uuid, vault_opts.SecretNameFor(uuid),
                                    vault_opts.kek, vault_opts.kek_alg, *g.err)
               .status();
    }
    if (ok.ok()) {
      // Only the binary headers, the JSON and the keyslot areas were written; the rest of the
      // file is the zeros Create gave it, and PlaceShiftHeader takes them as implied.
      uint64_t extent = 2 * v->metadata().hdr_size;
      for (const auto& ks : luks2::Keyslots(v->metadata())) extent = std::max(extent, ks.area_offset + ks.area_size);
      auto h = g.env->Open(tmp, OpenOptions{});
      ok = h.status();
      if (ok.ok()) {
        image.resize(size_t(std::min(extent, (*h)->Size())));
        ok = (*h)->ReadAt(0, image);
      }
    }
    (void)g.env->Remove(tmp);
    DS_RETURN_IF_ERROR(ok);
  }
  {
    DS_ASSIGN_OR_RETURN(auto d, g.env->Open(dev, rw));
    DS_RETURN_IF_ERROR(engine::PlaceShiftHeader(*d, image, shift).WithContext(dev + ": placing the header"));
  }
  Bytes().swap(image);  // the run's memory bound is the engine's, not this image's
  return ResumeOperation(g, da, keys, e, &vk, 0);
}

// decrypt DEVICE --header NEWFILE for a volume whose header is at the start of DEVICE (data at
// offset S), in cryptsetup 2.6.1's layout: the header is exported to NEWFILE with the operation
// already recorded, the ciphertext of the data's first S bytes is copied to the front, and the data
// is moved back to offset 0 as it is decrypted (engine/reencrypt_state.h). Order, so that no
// instant has a header that lies or a lost source:
//   1. NEWFILE.diskseal-new: a copy of the header + keyslots with the operation recorded, synced;
//   2. the copy to the front (which destroys the header on the device), synced;
//   3. rename to NEWFILE (durable). A run that finds step 1's file but no NEWFILE redoes 2 and 3.
Status DecryptShift(Globals& g, const DeviceArgs& da, const KeySource& keys, const EngineArgs& e,
                    const luks2::PbkdfOptions& pbkdf, VaultOptions& vault_opts) {
  const std::string& dev = da.device;
  const std::string& hdr = da.header;
  const std::string tmp = hdr + ".diskseal-new";
  OpenOptions rw;
  rw.write = true;
  rw.exclusive = true;
  if (g.env->Exists(tmp)) {
    std::optional<uint64_t> shift;
    std::string uuid;
    {
      auto t = luks2::Volume::Load(*g.env, dev, tmp, false);
      // The temp header records its device: another device's is refused before the copy below.
      if (t.ok()) DS_RETURN_IF_ERROR(engine::CheckBindingKeyless(*g.env, *t, tmp));
      if (t.ok()) {
        auto st = engine::ReadState(t->metadata(), t->data_device().Size());
        if (st.ok() && *st && (*st)->decrypt_shift() && (*st)->done == 0 && !(*st)->hotzone_len) {
          shift = (*st)->shift;
          uuid = t->metadata().uuid;
        }
      }
    }
    if (shift) {
      // Step 1 is durable; the front may be anything from untouched to fully copied.
      DS_ASSIGN_OR_RETURN(auto d, g.env->Open(dev, rw));
      auto front = luks2::ReadHeader(*d);
      if (front.ok() && front->md.uuid != uuid)
        return Busy(tmp + " was made for the volume " + uuid + ", not for " + dev + " (" + front->md.uuid +
                    "); remove it if it is stale");
      *g.err << dev << ": finishing the header export of an interrupted run\n";
      DS_RETURN_IF_ERROR(engine::CopyMovedSegmentToFront(*d, *shift).WithContext(dev));
      d.reset();
      DS_RETURN_IF_ERROR(g.env->Rename(tmp, hdr));
      return ResumeOperation(g, da, keys, e, nullptr, -1, nullptr, &vault_opts);
    }
    // Never completed, so the device was never written: start afresh.
    DS_RETURN_IF_ERROR(g.env->Remove(tmp));
  }
  auto loaded = luks2::Volume::Load(*g.env, dev, "", false);
  if (!loaded.ok())
    return loaded.status().WithContext(dev + ": " + hdr + " does not exist and no LUKS2 header is at the start of the device");
  luks2::Volume v = std::move(*loaded);
  const uint64_t size = v.data_device().Size();
  DS_ASSIGN_OR_RETURN(auto st, engine::ReadState(v.metadata(), size));
  if (st)
    return Busy(dev + ": an in-place " + engine::ModeName(st->mode) + " is in progress on it; finish it first "
                "(`diskseal resume " + dev + "`)");
  const auto segs = luks2::Segments(v.metadata());
  if (segs.size() != 1 || segs.front().type != "crypt")
    return Busy(dev + ": does not hold one encrypted data segment (already plaintext?)");
  const uint64_t shift = segs.front().offset;
  if (shift == 0 || size <= 2 * shift)
    return InvalidArgument(dev + ": the data offset " + std::to_string(shift) + " leaves no room to move the data back");
  DS_RETURN_IF_ERROR(v.CheckRequirements());
  DS_ASSIGN_OR_RETURN(luks2::Volume::Unlocked u,
                      WithTries<luks2::Volume::Unlocked>(
                          *g.err, keys, vault_opts.enabled(),
                          [&] { return ObtainPassphrase(*g.env, keys, &vault_opts, v.metadata(), dev); },
                          [&](const SecureBuffer& pass) { return v.Unlock(pass.span()); }));
  DS_ASSIGN_OR_RETURN(uint32_t iters, luks2::ChooseDigestIterations(pbkdf));
  // The exported header will be detached: it records the device it belongs to.
  DS_ASSIGN_OR_RETURN(engine::Binding binding, engine::CurrentBinding(*g.env, v, {{u.digest, &u.key}}));
  // 1. the header file, complete and with the operation recorded, before the device is touched.
  {
    DS_ASSIGN_OR_RETURN(auto f, g.env->Create(tmp, shift));
    DS_RETURN_IF_ERROR(engine::CopyRange(v.data_device(), 0, *f, 0, shift));
    DS_RETURN_IF_ERROR(f->Sync());
  }
  {
    Status made = [&]() -> Status {
      DS_ASSIGN_OR_RETURN(luks2::Volume t, luks2::Volume::Load(*g.env, dev, tmp, true));
      engine::WriteBinding(t.mutable_metadata(), binding);
      DS_RETURN_IF_ERROR(engine::InitDecryptShift(t.mutable_metadata(), u.key, size, iters).WithContext(dev));
      return t.Commit();  // synced: step 1 is durable
    }();
    if (!made.ok()) {
      (void)g.env->Remove(tmp);
      return made;
    }
  }
  {
    DS_ASSIGN_OR_RETURN(auto d, g.env->Open(dev, rw));
    DS_RETURN_IF_ERROR(engine::CopyMovedSegmentToFront(*d, shift).WithContext(dev));
  }
  DS_RETURN_IF_ERROR(g.env->Rename(tmp, hdr));
  return ResumeOperation(g, da, keys, e, &u.key, u.digest);
}

}  // namespace

Runner SetupEncrypt(CLI::App& app, Globals& g) {
  struct Opts {
    DeviceArgs dev;
    KeySource keys;
    luks2::FormatOptions f;
    EngineArgs e;
    ResilienceArgs res;
    ShiftArgs shift;
    VaultOptions vault;
  };
  auto o = std::make_shared<Opts>();
  AddDeviceArgs(app, o->dev);
  AddKeyOptions(app, o->keys);
  AddPbkdfOptions(app, o->f.pbkdf);
  AddEngineOptions(app, o->e);
  AddVaultOptions(app, o->vault);
  AddResilienceOptions(app, o->res, "checksum (default), journal, none (no crash safety); datashift with --reduce-device-size");
  app.add_option("--cipher,-c", o->f.cipher, "data cipher (default aes-xts-plain64)");
  app.add_option("--key-size,-s", o->f.key_size_bits, "volume key size in bits (default 512)");
  app.add_option("--sector-size", o->f.sector_size, "encryption sector size (default 4096 when the device allows)");
  AddSizeOption(app, "--luks2-metadata-size", o->f.metadata_size, "metadata copy size, 16k..4m");
  AddSizeOption(app, "--luks2-keyslots-size", o->f.keyslots_size, "keyslots area size");
  AddSizeOption(app, "--reduce-device-size", o->shift.reduce,
                "header at the start of the device: the last SIZE bytes must be unused; data moves by SIZE/2");
  app.add_flag("--resize-fs", o->shift.resize_fs, "with --reduce-device-size: shrink an ext2/3/4 filesystem first (e2fsck + resize2fs)");
  app.add_option("--label", o->f.label, "LUKS2 label");
  app.add_option("--uuid", o->f.uuid, "use this UUID");
  app.add_flag("--force", o->f.force, "write the header onto a header device that holds a signature");
  return [o, &g]() -> Status {
    CatchStopSignals();  // before anything is written: a signal from now on stops at a commit point
    const std::string& dev = o->dev.device;
    DS_ASSIGN_OR_RETURN(engine::Resilience res, o->res.Parse(dev));
    // One owner per device (io/device_claim.h), before any key derivation or file is made.
    // --init-only with a detached header writes nothing but the new header file: the device may
    // be in use (a mounted root filesystem is initialised this way, then opened at the next boot).
    const bool header_only = o->e.init_only && !o->dev.header.empty() && !g.env->Exists(o->dev.header);
    std::vector<DeviceClaim> claims;
    if (!header_only) {
      DS_ASSIGN_OR_RETURN(claims, ClaimVolume(*g.env, o->dev, ClaimMode::kExclusive, true, true, &o->e.run_dir));
    }
    if (o->dev.header.empty()) {
      if (!o->shift.reduce)
        return InvalidArgument(dev + ": encrypting in place needs --header FILE (detached header) or "
                                 "--reduce-device-size SIZE (header at the start of the device)");
      if (o->res.mode_opt->count() && res != engine::Resilience::kDatashift)
        return InvalidArgument(dev + ": with the header at the start of the device the resilience is datashift");
      return EncryptShift(g, o->dev, o->keys, o->f, o->e, o->shift, o->vault);
    }
    if (o->shift.reduce)
      return InvalidArgument("--reduce-device-size puts the header at the start of the device; it does not go with --header");
    if (res == engine::Resilience::kDatashift || res == engine::Resilience::kDatashiftChecksum)
      return InvalidArgument(dev + ": resilience datashift (data shift) needs --reduce-device-size, not --header");
    // A header device (an empty partition or disk) takes a new header unless it holds one.
    bool new_header_device = false;
    if (IsBlockDevice(o->dev.header)) {
      DS_ASSIGN_OR_RETURN(new_header_device, HeaderDeviceIsNew(*g.env, o->dev.header, o->f.force));
    }
    // Running the original command again resumes an interrupted run.
    if (!new_header_device && g.env->Exists(o->dev.header)) {
      auto v = luks2::Volume::Load(*g.env, dev, o->dev.header, false);
      if (!v.ok())
        return Busy(o->dev.header + ": exists but holds no readable LUKS2 header (" + v.status().message() +
                    "); refusing to overwrite it");
      DS_ASSIGN_OR_RETURN(auto st, engine::ReadState(v->metadata(), v->data_device().Size()));
      if (!st) return Busy(dev + ": already encrypted (" + o->dev.header + " holds a finished LUKS2 header)");
      return ResumeOperation(g, o->dev, o->keys, o->e, nullptr, -1, nullptr, &o->vault);
    }
    // The header is built completely in a temporary file, with the operation already recorded
    // in it, escrowed and verified with a vault (which, without a key file, makes the passphrase,
    // as ADE does), and then put in place (inplace/inplace.h): the header file either does not
    // exist or tells the truth (cryptsetup's second power-cut lesson).
    inplace::FormatRequest fr;
    fr.device = dev;
    fr.temp_header = inplace::TempHeaderPath(o->dev.header, new_header_device);
    fr.format = o->f;
    fr.resilience = res;
    fr.resilience_hash = o->res.hash;
    // --init-only without a header device: the device may be in use (read only, shared), and the
    // sector fits a filesystem that will stay mounted on the mapping.
    fr.device_mounted = header_only;
    fr.sector_for_online = o->e.init_only;
    if (o->vault.enabled()) fr.connect = [&] { return MakeVaultClient(*g.env, o->vault); };
    fr.secret_name = [&](const std::string& uuid) { return o->vault.SecretNameFor(uuid); };
    fr.kek = o->vault.kek;
    fr.kek_alg = o->vault.kek_alg;
    fr.passphrase = [&]() -> Result<SecureBuffer> {
      if (o->vault.enabled() && o->keys.key_file.empty()) return vault::GeneratePassphrase();
      return ReadKey(*g.env, o->keys, "Enter new passphrase for " + dev + ": ", true);
    };
    DS_ASSIGN_OR_RETURN(inplace::Formatted made, inplace::FormatAndEscrow(*g.env, fr, *g.err));
    DS_RETURN_IF_ERROR(inplace::PlaceHeader(*g.env, fr.temp_header, o->dev.header, new_header_device));
    const SecureBuffer& vk = made.volume_key;
    const int digest = made.digest;
    return ResumeOperation(g, o->dev, o->keys, o->e, &vk, digest, nullptr, &o->vault);
  };
}

Runner SetupDecrypt(CLI::App& app, Globals& g) {
  struct Opts {
    DeviceArgs dev;
    KeySource keys;
    EngineArgs e;
    ResilienceArgs res;
    luks2::PbkdfOptions pbkdf;
    VaultOptions vault;
  };
  auto o = std::make_shared<Opts>();
  AddDeviceArgs(app, o->dev);
  AddKeyOptions(app, o->keys);
  AddEngineOptions(app, o->e);
  AddVaultOptions(app, o->vault);
  AddResilienceOptions(app, o->res, "checksum (default), journal, or none (no crash safety)");
  return [o, &g]() -> Status {
    CatchStopSignals();
    const std::string& dev = o->dev.device;
    if (o->dev.header.empty())
      return InvalidArgument(dev + ": decrypt needs --header FILE: the detached header, or, when the header is at "
                                   "the start of the device, a new file to export it to (the data then moves back to "
                                   "offset 0, as with cryptsetup's `reencrypt --decrypt --header NEWFILE`)");
    DS_ASSIGN_OR_RETURN(engine::Resilience res, o->res.Parse(dev));
    if (res == engine::Resilience::kDatashift || res == engine::Resilience::kDatashiftChecksum)
      return InvalidArgument(dev + ": --resilience datashift* is chosen by diskseal itself for a header at the start");
    // One owner per device (io/device_claim.h), before any key derivation or file is made.
    DS_ASSIGN_OR_RETURN(auto claims, ClaimVolume(*g.env, o->dev, ClaimMode::kExclusive, true, true, &o->e.run_dir));
    if (!g.env->Exists(o->dev.header)) {
      if (o->res.mode != "checksum")
        return InvalidArgument(dev + ": with the header at the start the resilience is datashift-checksum");
      if (!o->res.hash.empty())
        return InvalidArgument(dev + ": with the header at the start the moved segment's checksums are sha256, as "
                                     "cryptsetup's datashift-checksum layout has them; --resilience-hash does not apply");
      return DecryptShift(g, o->dev, o->keys, o->e, o->pbkdf, o->vault);
    }
    {
      DS_ASSIGN_OR_RETURN(auto d, g.env->Open(dev, OpenOptions{}));
      DS_ASSIGN_OR_RETURN(bool luks, luks2::HasLuksMagic(*d));
      if (luks)
        return Busy(o->dev.header + ": exists; refusing to overwrite it (" + dev + " has its header at the start: "
                    "decrypting it exports the header to a new file)");
    }
    // The decryption recorded in the header (inplace/inplace.h), its binding checked and renewed.
    inplace::InitDecryptRequest ir;
    ir.device = dev;
    ir.header = o->dev.header;
    ir.resilience = res;
    ir.resilience_hash = o->res.hash;
    ir.pbkdf = o->pbkdf;
    ir.unlock = [&](luks2::Volume& v) {
      return WithTries<luks2::Volume::Unlocked>(
          *g.err, o->keys, o->vault.enabled(), [&] { return ObtainPassphrase(*g.env, o->keys, &o->vault, v.metadata(), dev); },
          [&](const SecureBuffer& pass) { return v.Unlock(pass.span()); });
    };
    DS_ASSIGN_OR_RETURN(inplace::DecryptInitResult init, inplace::InitDecrypt(*g.env, ir));
    if (init.state == inplace::DecryptInit::kInProgress)
      return ResumeOperation(g, o->dev, o->keys, o->e, nullptr, -1, nullptr, &o->vault);
    if (init.state == inplace::DecryptInit::kPlaintext)
      return Busy(dev + ": already decrypted (the header describes plaintext)");
    const luks2::Volume::Unlocked& u = *init.unlocked;
    DS_RETURN_IF_ERROR(ResumeOperation(g, o->dev, o->keys, o->e, &u.key, u.digest));
    if (o->e.init_only) return Status::Ok();
    // Verified: the header's binding matched before the first write. Nothing is said of the header
    // file: only the device's state is known here.
    *g.out << dev << " holds plaintext again (verified against " << o->dev.header << " before the first write).\n";
    return Status::Ok();
  };
}

Runner SetupReencrypt(CLI::App& app, Globals& g) {
  struct Opts {
    DeviceArgs dev;
    KeySource keys;
    EngineArgs e;
    ResilienceArgs res;
    luks2::PbkdfOptions pbkdf;
    std::string cipher;
    uint32_t key_size_bits = 0, sector_size = 0;
    SlotArg slot;
  };
  auto o = std::make_shared<Opts>();
  AddDeviceArgs(app, o->dev);
  AddKeyOptions(app, o->keys);
  AddEngineOptions(app, o->e);
  AddPbkdfOptions(app, o->pbkdf);
  AddResilienceOptions(app, o->res, "checksum (default), journal, or none (no crash safety)");
  app.add_option("--cipher,-c", o->cipher, "new data cipher (default: unchanged)");
  app.add_option("--key-size,-s", o->key_size_bits, "new volume key size in bits (default: unchanged)");
  app.add_option("--sector-size", o->sector_size, "new encryption sector size (default: unchanged)");
  AddSlotOption(app, o->slot, "keep only this keyslot (its passphrase is asked); every other keyslot of the data "
                              "key is removed at the end, as with cryptsetup");
  return [o, &g]() -> Status {
    CatchStopSignals();
    const std::string& dev = o->dev.device;
    // Detached or at the start alike: the data stays where it is (old and new segment at the same
    // offset), the resilience data goes into the header's keyslots area, as cryptsetup does it.
    DS_ASSIGN_OR_RETURN(engine::Resilience res, o->res.Parse(dev));
    // One owner per device (io/device_claim.h), before any key derivation or file is made.
    DS_ASSIGN_OR_RETURN(auto claims, ClaimVolume(*g.env, o->dev, ClaimMode::kExclusive, true, true, &o->e.run_dir));
    DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(*g.env, dev, o->dev.header, true));
    DS_RETURN_IF_ERROR(engine::CheckBindingKeyless(*g.env, v, o->dev.header));
    DS_ASSIGN_OR_RETURN(auto st, engine::ReadState(v.metadata(), v.data_device().Size()));
    if (st) return ResumeOperation(g, o->dev, o->keys, o->e, nullptr, -1);
    DS_RETURN_IF_ERROR(v.CheckRequirements());
    const luks2::SegmentInfo seg = luks2::Segments(v.metadata()).front();
    if (seg.type != "crypt") return InvalidArgument(dev + ": holds plaintext; use encrypt");
    // Which keyslots live on under the new key (cryptsetup 2.6.1's rule): --key-slot N keeps N
    // only; otherwise every keyslot of the data key, each behind its own passphrase (asked on a
    // terminal); a key file with more than one such keyslot is refused.
    std::vector<int> slots;
    if (auto d_old = luks2::DigestOfSegment(v.metadata(), seg.id))
      for (const auto& ks : luks2::Keyslots(v.metadata()))
        if (ks.type == "luks2" && std::find(d_old->keyslots.begin(), d_old->keyslots.end(), ks.id) != d_old->keyslots.end())
          slots.push_back(ks.id);
    std::vector<int> keep;
    if (auto want = o->slot.get()) {
      if (std::find(slots.begin(), slots.end(), *want) == slots.end())
        return NotFound(dev + ": keyslot " + std::to_string(*want) + " does not exist or does not open the data");
      keep = {*want};
    } else if (slots.size() > 1) {
      std::string list;
      for (int k : slots) list += (list.empty() ? "" : ", ") + std::to_string(k);
      if (!o->keys.key_file.empty() || !isatty(0))
        return InvalidArgument(dev + ": keyslots " + list + " open the data; a key file (or a passphrase not typed on a "
                               "terminal) can be used only with --key-slot N, which keeps keyslot N alone (as cryptsetup); "
                               "on a terminal every keyslot's passphrase is asked and all are kept");
      keep = slots;
    } else {
      keep = slots;  // one keyslot (or none, and Unlock says so)
    }
    std::vector<SecureBuffer> passes;
    std::optional<luks2::Volume::Unlocked> unlocked;
    for (int k : keep) {
      const std::string prompt = keep.size() > 1 || o->slot.get()
                                     ? "Enter passphrase for key slot " + std::to_string(k) + " of " + dev + ": "
                                     : "Enter passphrase for " + dev + ": ";
      DS_ASSIGN_OR_RETURN(SecureBuffer p, ReadKey(*g.env, o->keys, prompt, false));
      DS_ASSIGN_OR_RETURN(luks2::Volume::Unlocked one,
                          v.Unlock(p.span(), keep.size() > 1 || o->slot.get() ? std::optional<int>(k) : std::nullopt));
      if (!unlocked) unlocked = std::move(one);
      passes.push_back(std::move(p));
    }
    if (keep.empty()) {
      DS_ASSIGN_OR_RETURN(SecureBuffer p, ReadKey(*g.env, o->keys, "Enter passphrase for " + dev + ": ", false));
      DS_ASSIGN_OR_RETURN(luks2::Volume::Unlocked one, v.Unlock(p.span()));
      unlocked = std::move(one);
      passes.push_back(std::move(p));
    }
    luks2::Volume::Unlocked& u = *unlocked;
    const SecureBuffer& pass = passes.front();
    if (keep.size() == 1 && slots.size() == 1) keep = {u.keyslot};
    const std::map<int, const SecureBuffer*> keymap = {{u.digest, &u.key}};
    // A detached header used with another device is refused before anything is written.
    DS_RETURN_IF_ERROR(engine::CheckBindingUnlocked(v, o->dev.header, keymap));
    std::optional<engine::Binding> binding;
    if (v.detached()) {
      DS_ASSIGN_OR_RETURN(binding, engine::CurrentBinding(*g.env, v, keymap));
    }
    const std::string cipher = o->cipher.empty() ? seg.cipher : o->cipher;
    const size_t key_bytes = o->key_size_bits ? o->key_size_bits / 8 : u.key.size();
    const uint32_t sector = o->sector_size ? o->sector_size : seg.sector_size;
    DS_RETURN_IF_ERROR(CheckCipherSpec(cipher, key_bytes).WithContext("--cipher/--key-size"));
    const uint64_t data_bytes = v.data_device().Size() > seg.offset ? v.data_device().Size() - seg.offset : 0;
    if (sector < 512 || sector > 4096 || (sector & (sector - 1)) || seg.offset % sector || data_bytes % sector)
      return InvalidArgument(dev + ": --sector-size " + std::to_string(sector) + " does not fit the data (" +
                             std::to_string(data_bytes) + " bytes at offset " + std::to_string(seg.offset) + ")");
    SecureBuffer nk(key_bytes);
    do {
      DS_RETURN_IF_ERROR(RandomBytes(nk.span()));
    } while (nk.span().size() % 2 == 0 &&
             std::equal(nk.data(), nk.data() + key_bytes / 2, nk.data() + key_bytes / 2));
    DS_ASSIGN_OR_RETURN(luks2::KdfSpec kdf, luks2::ChooseKdf(o->pbkdf));
    DS_ASSIGN_OR_RETURN(uint32_t iters, luks2::ChooseDigestIterations(o->pbkdf));
    std::vector<engine::NewKeyslot> made;
    for (size_t i = 0; i < passes.size(); ++i)
      made.push_back({passes[i].span(), i < keep.size() ? std::optional<int>(keep[i]) : std::nullopt});
    // Say what goes at the end: the keyslots not kept, and the tokens that lose them.
    for (int k : slots) {
      if (std::find(keep.begin(), keep.end(), k) != keep.end()) continue;
      *g.err << dev << ": keyslot " << k << " is not kept (its passphrase was not given); it is removed when the "
             << "reencryption finishes\n";
      for (const auto& t : luks2::Tokens(v.metadata()))
        if (std::find(t.keyslots.begin(), t.keyslots.end(), k) != t.keyslots.end())
          *g.err << dev << ": token " << t.id << " (" << t.type << ") loses keyslot " << k << "\n";
    }
    if (binding) engine::WriteBinding(v.mutable_metadata(), *binding);
    DS_RETURN_IF_ERROR(engine::InitReencrypt(v.mutable_metadata(), v.metadata_device(), u.key, nk, made,
                                             kdf, cipher, sector, res, iters, o->res.hash).WithContext(dev));
    DS_RETURN_IF_ERROR(v.Commit());
    return ResumeOperation(g, o->dev, o->keys, o->e, nullptr, -1, &pass);
  };
}

Runner SetupResume(CLI::App& app, Globals& g) {
  struct Opts {
    DeviceArgs dev;
    KeySource keys;
    EngineArgs e;
    VaultOptions vault;
    bool all = false;
    std::string state_dir = "/var/lib/diskseal";
    int freeze_at_percent = -1;
  };
  auto o = std::make_shared<Opts>();
  AddDeviceArgs(app, o->dev, false);
  AddKeyOptions(app, o->keys);
  AddEngineOptions(app, o->e);
  AddVaultOptions(app, o->vault);
  app.add_flag("--all", o->all, "every volume `enable` recorded in --state-dir (the boot-time unit runs this): "
                                "interrupted operations continue, online where the kernel has device-mapper");
  app.add_option("--state-dir", o->state_dir, "with --all: the machine state (default /var/lib/diskseal)");
  // Tests only (as enable's): stop at a known point so a test acts there without timing.
  app.add_option("--test-freeze-at-percent", o->freeze_at_percent)->group("");
  return [o, &g]() -> Status {
    if (o->all) {
      if (!o->dev.device.empty() || !o->dev.header.empty())
        return InvalidArgument("resume --all takes no DEVICE or --header: it resumes what " + o->state_dir + " records");
      return ResumeAll(g, o->state_dir, o->vault, o->e.hotzone, o->e.progress_json, o->freeze_at_percent);
    }
    if (o->dev.device.empty()) return InvalidArgument("resume needs a DEVICE (or --all)");
    CatchStopSignals();
    DS_ASSIGN_OR_RETURN(auto claims, ClaimVolume(*g.env, o->dev, ClaimMode::kExclusive, true, true, &o->e.run_dir));
    return ResumeOperation(g, o->dev, o->keys, o->e, nullptr, -1, nullptr, &o->vault);
  };
}

}  // namespace ds::cli

namespace ds::cli {

// recover DEVICE --header NEWFILE --vault ... (--uuid U | --vault-secret-name N): the detached
// header rebuilt from the vault alone (engine/volume_escrow.h), after which `open` works.
Runner SetupRecover(CLI::App& app, Globals& g) {
  struct Opts {
    DeviceArgs dev;
    VaultOptions vault;
    std::string uuid;
    luks2::PbkdfOptions pbkdf;
  };
  auto o = std::make_shared<Opts>();
  AddDeviceArgs(app, o->dev);
  AddVaultOptions(app, o->vault);
  AddPbkdfOptions(app, o->pbkdf);
  AddVolumeUuidOption(app, o->uuid);
  return [o, &g]() -> Status {
    const std::string& dev = o->dev.device;
    if (o->dev.header.empty()) return InvalidArgument(dev + ": recover needs --header NEWFILE: where to write the rebuilt header");
    if (!o->vault.enabled()) return InvalidArgument(dev + ": recover needs --vault (the header is rebuilt from the vault)");
    DS_ASSIGN_OR_RETURN(const std::string secret, HeaderSecretFor(dev + ": recover", o->vault, o->uuid));
    DS_ASSIGN_OR_RETURN(auto client, MakeVaultClient(*g.env, o->vault));
    DS_RETURN_IF_ERROR(engine::RecoverHeader(*g.env, *client, dev, secret, o->dev.header, o->pbkdf, *g.err));
    *g.out << dev << ": header rebuilt into " << o->dev.header << "; open it with `diskseal open " << dev << " NAME --header "
           << o->dev.header << " --vault " << o->vault.url << " ...`\n";
    return Status::Ok();
  };
}

}  // namespace ds::cli
