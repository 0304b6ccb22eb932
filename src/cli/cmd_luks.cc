// The LUKS2 commands: format, dump, test-key, keyslot, token, header, repair, import, export.
#include <unistd.h>

#include <cstring>
#include <iostream>
#include <memory>
#include <ostream>

#include "cli/claim.h"
#include "cli/commands.h"
#include "cli/luks_options.h"
#include "cli/vault_options.h"
#include "crypto/crypto.h"
#include "engine/binding.h"
#include "engine/volume_escrow.h"
#include "io/mem_device.h"
#include "luks2/dump.h"
#include "luks2/format.h"
#include "util/progress.h"

namespace ds::cli {

namespace {

using luks2::Json;

Status PrintJson(Globals& g, const Json& j) {
  *g.out << j.dump(2) << "\n";
  return Status::Ok();
}

// Copies `n` bytes from src to dst (1 MiB at a time) with progress.
Status CopyData(BlockDevice& src, uint64_t src_off, BlockDevice* dst, int out_fd, uint64_t dst_off,
                uint64_t n, Progress& progress) {
  Bytes buf(1 << 20);
  for (uint64_t done = 0; done < n;) {
    size_t len = size_t(std::min<uint64_t>(buf.size(), n - done));
    std::span<uint8_t> chunk(buf.data(), len);
    DS_RETURN_IF_ERROR(src.ReadAt(src_off + done, chunk));
    if (dst) {
      DS_RETURN_IF_ERROR(dst->WriteAt(dst_off + done, chunk));
    } else {
      size_t w = 0;
      while (w < len) {
        ssize_t k = ::write(out_fd, chunk.data() + w, len - w);
        if (k < 0) {
          if (errno == EINTR) continue;
          return PosixError("stdout", errno);
        }
        w += size_t(k);
      }
    }
    done += len;
    progress.Advance(len);
  }
  return Status::Ok();
}

// format writes over whatever the target holds (the device, or the header file when detached:
// then the data device is not written). A recognised signature (filesystem, LUKS, swap, LVM PV
// ...) needs YES typed on a terminal, as cryptsetup asks it; without a terminal it is refused
// unless -q/--batch-mode says the caller knows (cryptsetup itself goes ahead there).
Status ConfirmOverwrite(Globals& g, const std::string& target, bool force, bool batch) {
  if (!g.env->Exists(target)) return Status::Ok();
  std::optional<engine::Signature> sig;
  {
    auto d = g.env->Open(target, OpenOptions{});
    if (!d.ok()) return Status::Ok();  // Format names the real problem (missing, no permission)
    DS_ASSIGN_OR_RETURN(sig, engine::ProbeStart(**d));
  }
  if (!sig) return Status::Ok();
  if ((sig->type == "luks2" || sig->type == "luks1") && !force)
    return Busy(target + ": already holds a LUKS header; use --force to overwrite it");
  if (batch) return Status::Ok();
  const std::string what = target + " already contains a '" + sig->type + "' superblock signature";
  if (!isatty(0))
    return InvalidArgument(what + "; refusing to format over it without confirmation (type YES on a terminal, "
                           "or pass -q/--batch-mode)");
  *g.err << "WARNING: Device " << target << " already contains a '" << sig->type << "' superblock signature.\n\n"
         << "WARNING!\n========\nThis will overwrite data on " << target << " irrevocably.\n\n"
         << "Are you sure? (Type 'yes' in capital letters): " << std::flush;
  std::string answer;
  if (!std::getline(std::cin, answer) || answer != "YES")
    return InvalidArgument(target + ": format not confirmed (operation aborted); nothing was written");
  return Status::Ok();
}

}  // namespace

Runner SetupFormat(CLI::App& app, Globals& g) {
  struct Opts {
    DeviceArgs dev;
    KeySource keys;
    luks2::FormatOptions f;
    SlotArg slot;
    uint64_t offset = 0;
    bool offset_given = false;
    std::string type = "luks2";
    bool batch = false;
  };
  auto o = std::make_shared<Opts>();
  AddDeviceArgs(app, o->dev);
  AddKeyOptions(app, o->keys);
  AddPbkdfOptions(app, o->f.pbkdf);
  AddSlotOption(app, o->slot, "keyslot for the passphrase (default 0)");
  app.add_option("--type", o->type, "header type; only luks2")->check(CLI::IsMember({"luks2"}));
  app.add_option("--cipher,-c", o->f.cipher, "data cipher (default aes-xts-plain64)");
  app.add_option("--key-size,-s", o->f.key_size_bits, "volume key size in bits (default 512)");
  app.add_option("--sector-size", o->f.sector_size, "encryption sector size (default: 4096 when the data area is 4 KiB-aligned, else 512)");
  AddSizeOption(app, "--luks2-metadata-size", o->f.metadata_size, "metadata copy size, 16k..4m");
  AddSizeOption(app, "--luks2-keyslots-size", o->f.keyslots_size, "keyslots area size");
  app.add_option("--offset,-o", o->offset, "data offset in 512-byte sectors")->each([o](const std::string&) { o->offset_given = true; });
  app.add_option("--label", o->f.label, "LUKS2 label");
  app.add_option("--subsystem", o->f.subsystem, "LUKS2 subsystem");
  app.add_option("--uuid", o->f.uuid, "use this UUID instead of a random one");
  app.add_flag("--force", o->f.force, "overwrite an existing LUKS header");
  app.add_flag("-q,--batch-mode", o->batch, "do not ask before formatting over a filesystem or other signature");
  app.add_flag("--json", g.json, "print the result as JSON");
  return [o, &g]() -> Status {
    if (o->offset_given) o->f.offset_sectors = o->offset;
    o->f.keyslot = o->slot.get();
    DS_ASSIGN_OR_RETURN(auto claims, ClaimVolume(*g.env, o->dev, ClaimMode::kExclusive, o->dev.header.empty()));
    // A header device holding a signature is refused without --force (then no question asked).
    const bool header_device = !o->dev.header.empty() && IsBlockDevice(o->dev.header);
    if (header_device) DS_RETURN_IF_ERROR(HeaderDeviceIsNew(*g.env, o->dev.header, o->f.force).status());
    DS_RETURN_IF_ERROR(ConfirmOverwrite(g, o->dev.header.empty() ? o->dev.device : o->dev.header, o->f.force,
                                        o->batch || (header_device && o->f.force)));
    DS_ASSIGN_OR_RETURN(SecureBuffer pass, ReadKey(*g.env, o->keys, "Enter passphrase for " + o->dev.device + ": ",
                                                   !o->batch));  // -q: no verify unless -y (cryptsetup)
    auto v = luks2::Volume::Format(*g.env, o->dev.device, o->dev.header, o->f, pass.span());
    if (!v.ok()) return v.status().WithContext(o->dev.device + ": format");
    const auto segs = luks2::Segments(v->metadata());
    if (g.json)
      return PrintJson(g, {{"device", o->dev.device}, {"header", o->dev.header.empty() ? o->dev.device : o->dev.header},
                           {"uuid", v->metadata().uuid}, {"data_offset", segs[0].offset},
                           {"keyslot", o->f.keyslot.value_or(0)}});
    *g.out << "Formatted " << o->dev.device << " as LUKS2, UUID " << v->metadata().uuid << "\n";
    return Status::Ok();
  };
}

Runner SetupDump(CLI::App& app, Globals& g) {
  auto d = std::make_shared<DeviceArgs>();
  AddDeviceArgs(app, *d);
  app.add_flag("--json", g.json, "print the stable JSON schema (docs/json-schemas.md)");
  return [d, &g]() -> Status {
    DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(*g.env, d->device, d->header, false));
    if (g.json) return PrintJson(g, luks2::DumpJson(v.header_state()));
    *g.out << luks2::DumpText(v.header_state());
    return Status::Ok();
  };
}

Runner SetupTestKey(CLI::App& app, Globals& g) {
  struct Opts { DeviceArgs dev; KeySource keys; SlotArg slot; };
  auto o = std::make_shared<Opts>();
  AddDeviceArgs(app, o->dev);
  AddKeyOptions(app, o->keys);
  AddSlotOption(app, o->slot, "try only this keyslot");
  app.add_flag("--json", g.json, "print the result as JSON");
  return [o, &g]() -> Status {
    DS_ASSIGN_OR_RETURN(OpenedVolume ov, LoadAndUnlock(g, o->dev, o->keys, o->slot.get(), false));
    if (g.json) return PrintJson(g, {{"keyslot", ov.unlocked.keyslot}, {"digest", ov.unlocked.digest}});
    *g.out << "Key slot " << ov.unlocked.keyslot << " unlocked.\n";
    return Status::Ok();
  };
}

Runner SetupKeyslot(CLI::App& app, Globals& g) {
  app.require_subcommand(1);
  struct Opts {
    DeviceArgs dev;
    KeySource keys, new_keys;
    SlotArg slot, unlock_slot;
    luks2::PbkdfOptions pbkdf;
    int remove_id = -1;
    bool force = false;
  };
  auto o = std::make_shared<Opts>();
  std::vector<std::pair<CLI::App*, Runner>> subs;

  CLI::App* add = app.add_subcommand("add", "add a passphrase in a new keyslot");
  AddDeviceArgs(*add, o->dev);
  AddKeyOptions(*add, o->keys);
  AddKeyOptions(*add, o->new_keys, "new-");
  AddSlotOption(*add, o->slot, "slot for the new passphrase");
  AddPbkdfOptions(*add, o->pbkdf);
  add->add_flag("--json", g.json, "print the result as JSON");
  subs.emplace_back(add, [o, &g]() -> Status {
    DS_ASSIGN_OR_RETURN(auto claims, ClaimVolume(*g.env, o->dev, ClaimMode::kExclusive, o->dev.header.empty()));
    DS_ASSIGN_OR_RETURN(OpenedVolume ov, LoadAndUnlock(g, o->dev, o->keys, std::nullopt, true));
    DS_ASSIGN_OR_RETURN(SecureBuffer np, ReadKey(*g.env, o->new_keys, "Enter new passphrase: ", true));
    DS_ASSIGN_OR_RETURN(int id, ov.volume.AddKeyslot(ov.unlocked, np.span(), o->pbkdf, o->slot.get()));
    if (g.json) return PrintJson(g, {{"keyslot", id}});
    *g.out << "Key slot " << id << " created.\n";
    return Status::Ok();
  });

  CLI::App* rm = app.add_subcommand("remove", "remove a keyslot and wipe its key material");
  AddDeviceArgs(*rm, o->dev);
  rm->add_option("slot", o->remove_id, "keyslot number")->required()->check(CLI::Range(0, 31));
  rm->add_flag("--force", o->force, "allow removing the last keyslot that unlocks the data");
  subs.emplace_back(rm, [o, &g]() -> Status {
    DS_ASSIGN_OR_RETURN(auto claims, ClaimVolume(*g.env, o->dev, ClaimMode::kExclusive, o->dev.header.empty()));
    DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(*g.env, o->dev.device, o->dev.header, true));
    DS_RETURN_IF_ERROR(v.CheckRequirements());
    DS_RETURN_IF_ERROR(v.RemoveKeyslot(o->remove_id, o->force));
    *g.out << "Key slot " << o->remove_id << " removed.\n";
    return Status::Ok();
  });

  CLI::App* ch = app.add_subcommand("change", "replace the passphrase of a keyslot");
  AddDeviceArgs(*ch, o->dev);
  AddKeyOptions(*ch, o->keys);
  AddKeyOptions(*ch, o->new_keys, "new-");
  AddSlotOption(*ch, o->unlock_slot, "the keyslot to change (default: the one the passphrase opens)");
  AddPbkdfOptions(*ch, o->pbkdf);
  subs.emplace_back(ch, [o, &g]() -> Status {
    DS_ASSIGN_OR_RETURN(auto claims, ClaimVolume(*g.env, o->dev, ClaimMode::kExclusive, o->dev.header.empty()));
    DS_ASSIGN_OR_RETURN(OpenedVolume ov, LoadAndUnlock(g, o->dev, o->keys, o->unlock_slot.get(), true));
    DS_ASSIGN_OR_RETURN(SecureBuffer np, ReadKey(*g.env, o->new_keys, "Enter new passphrase: ", true));
    DS_RETURN_IF_ERROR(ov.volume.ChangeKeyslot(ov.unlocked, np.span(), o->pbkdf));
    *g.out << "Key slot " << ov.unlocked.keyslot << " changed.\n";
    return Status::Ok();
  });

  CLI::App* ls = app.add_subcommand("list", "list keyslots");
  AddDeviceArgs(*ls, o->dev);
  ls->add_flag("--json", g.json, "print as JSON");
  subs.emplace_back(ls, [o, &g]() -> Status {
    DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(*g.env, o->dev.device, o->dev.header, false));
    Json all = luks2::DumpJson(v.header_state())["keyslots"];
    if (g.json) return PrintJson(g, all);
    for (const auto& k : all) {
      *g.out << k["id"].get<int>() << ": " << k["type"].get<std::string>();
      if (k.contains("kdf")) *g.out << " " << k["kdf"]["type"].get<std::string>();
      *g.out << " " << k["key_size"].get<int>() * 8 << " bits\n";
    }
    return Status::Ok();
  });
  return Dispatch(std::move(subs));
}

Runner SetupToken(CLI::App& app, Globals& g) {
  app.require_subcommand(1);
  struct Opts {
    DeviceArgs dev;
    std::string json_file;
    int token_id = -1;
    bool replace = false;
  };
  auto o = std::make_shared<Opts>();
  std::vector<std::pair<CLI::App*, Runner>> subs;

  CLI::App* imp = app.add_subcommand("import", "add a token from a JSON file (- for stdin)");
  AddDeviceArgs(*imp, o->dev);
  imp->add_option("--json-file", o->json_file, "the token JSON")->required();
  imp->add_option("--token-id", o->token_id, "token number (default: first free)")->check(CLI::Range(0, 31));
  imp->add_flag("--token-replace", o->replace, "replace an existing token with this id");
  imp->add_flag("--json", g.json, "print the result as JSON");
  subs.emplace_back(imp, [o, &g]() -> Status {
    std::string text;
    if (o->json_file == "-") {
      char buf[65536];
      ssize_t n;
      while ((n = ::read(0, buf, sizeof buf)) > 0) {
        text.append(buf, size_t(n));
        if (text.size() > (4u << 20)) return InvalidArgument("stdin: token JSON larger than 4 MiB");
      }
    } else {
      DS_ASSIGN_OR_RETURN(text, g.env->ReadFile(o->json_file, 4u << 20));
    }
    Json t = Json::parse(text, nullptr, false);
    if (t.is_discarded()) return InvalidArgument(o->json_file + ": not valid JSON");
    DS_ASSIGN_OR_RETURN(auto claims, ClaimVolume(*g.env, o->dev, ClaimMode::kExclusive, o->dev.header.empty()));
    DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(*g.env, o->dev.device, o->dev.header, true));
    DS_RETURN_IF_ERROR(v.CheckRequirements());
    std::optional<int> id = o->token_id < 0 ? std::nullopt : std::optional<int>(o->token_id);
    DS_ASSIGN_OR_RETURN(int tid, v.ImportToken(t, id, o->replace));
    if (g.json) return PrintJson(g, {{"token", tid}});
    *g.out << "Token " << tid << " imported.\n";
    return Status::Ok();
  });

  CLI::App* exp = app.add_subcommand("export", "print a token's JSON exactly as stored");
  AddDeviceArgs(*exp, o->dev);
  exp->add_option("--token-id", o->token_id, "token number")->required()->check(CLI::Range(0, 31));
  subs.emplace_back(exp, [o, &g]() -> Status {
    DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(*g.env, o->dev.device, o->dev.header, false));
    DS_ASSIGN_OR_RETURN(Json t, v.ExportToken(o->token_id));
    *g.out << luks2::SerializeJson(t) << "\n";
    return Status::Ok();
  });

  CLI::App* rm = app.add_subcommand("remove", "remove a token");
  AddDeviceArgs(*rm, o->dev);
  rm->add_option("--token-id", o->token_id, "token number")->required()->check(CLI::Range(0, 31));
  subs.emplace_back(rm, [o, &g]() -> Status {
    DS_ASSIGN_OR_RETURN(auto claims, ClaimVolume(*g.env, o->dev, ClaimMode::kExclusive, o->dev.header.empty()));
    DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(*g.env, o->dev.device, o->dev.header, true));
    DS_RETURN_IF_ERROR(v.CheckRequirements());
    DS_RETURN_IF_ERROR(v.RemoveToken(o->token_id));
    *g.out << "Token " << o->token_id << " removed.\n";
    return Status::Ok();
  });
  return Dispatch(std::move(subs));
}

Runner SetupHeader(CLI::App& app, Globals& g) {
  app.require_subcommand(1);
  struct Opts { DeviceArgs dev; std::string file; bool force = false; };
  auto o = std::make_shared<Opts>();
  std::vector<std::pair<CLI::App*, Runner>> subs;

  CLI::App* bk = app.add_subcommand("backup", "save the header and keyslots area to a file");
  AddDeviceArgs(*bk, o->dev);
  bk->add_option("--header-backup-file", o->file, "the backup file (must not exist)")->required();
  subs.emplace_back(bk, [o, &g]() -> Status {
    if (g.env->Exists(o->file)) return InvalidArgument(o->file + ": already exists; refusing to overwrite a backup");
    DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(*g.env, o->dev.device, o->dev.header, false));
    const uint64_t n = v.metadata().areas_end();
    Bytes data(n);
    DS_RETURN_IF_ERROR(v.metadata_device().ReadAt(0, data));
    DS_ASSIGN_OR_RETURN(auto out, g.env->Create(o->file, n, 0600));
    DS_RETURN_IF_ERROR(out->WriteAt(0, data));
    DS_RETURN_IF_ERROR(out->Sync());
    *g.out << "Header of " << o->dev.device << " (" << n << " bytes) saved to " << o->file << ".\n";
    return Status::Ok();
  });

  CLI::App* rs = app.add_subcommand("restore", "write a header backup back onto the device");
  AddDeviceArgs(*rs, o->dev);
  rs->add_option("--header-backup-file", o->file, "the backup file")->required();
  rs->add_flag("--force", o->force, "restore over a different or missing LUKS header");
  subs.emplace_back(rs, [o, &g]() -> Status {
    DS_ASSIGN_OR_RETURN(auto claims, ClaimVolume(*g.env, o->dev, ClaimMode::kExclusive, o->dev.header.empty()));
    DS_ASSIGN_OR_RETURN(std::string raw, g.env->ReadFile(o->file, luks2::kMaxKeyslotsSize + (8u << 20)));
    MemDevice mem(o->file, Bytes(raw.begin(), raw.end()));
    auto backup = luks2::ReadHeader(mem);
    if (!backup.ok()) return backup.status().WithContext(o->file + ": not a usable LUKS2 header backup");
    const std::string target = o->dev.header.empty() ? o->dev.device : o->dev.header;
    OpenOptions rw;
    rw.write = true;
    DS_ASSIGN_OR_RETURN(auto dev, g.env->Open(target, rw));
    const uint64_t n = backup->md.areas_end();
    if (dev->Size() < n || raw.size() < n)
      return InvalidArgument(target + ": smaller than the " + std::to_string(n) + "-byte header in the backup");
    auto current = luks2::ReadHeader(*dev);
    if (!o->force && (!current.ok() || current->md.uuid != backup->md.uuid))
      return Busy(target + ": its header is missing or has another UUID than the backup (" +
                  backup->md.uuid + "); use --force to restore anyway");
    DS_RETURN_IF_ERROR(dev->WriteAt(0, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(raw.data()), n)));
    DS_RETURN_IF_ERROR(dev->Sync());
    *g.out << "Header restored on " << target << ".\n";
    return Status::Ok();
  });
  return Dispatch(std::move(subs));
}

// repair DEVICE [--header F]: one damaged header copy rewritten from the other. With --vault, a
// detached header file that is missing or unreadable altogether is put back from the vault
// (engine::RestoreHeader, which `recover` shares).
Runner SetupRepair(CLI::App& app, Globals& g) {
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
  AddVolumeUuidOption(app, o->uuid, "with --vault: ");
  return [o, &g]() -> Status {
    DeviceArgs* d = &o->dev;
    if (o->vault.enabled()) {
      const std::string& dev = d->device;
      if (d->header.empty())
        return InvalidArgument(dev + ": repair --vault needs --header F: the detached header file to restore");
      DS_ASSIGN_OR_RETURN(const std::string secret, HeaderSecretFor(dev + ": repair --vault", o->vault, o->uuid));
      DS_ASSIGN_OR_RETURN(auto claims, ClaimVolume(*g.env, *d, ClaimMode::kExclusive, false));
      DS_ASSIGN_OR_RETURN(auto client, MakeVaultClient(*g.env, o->vault));
      DS_RETURN_IF_ERROR(engine::RestoreHeader(*g.env, *client, dev, secret, d->header, o->pbkdf, *g.err));
      *g.out << dev << ": header restored from the vault into " << d->header << ".\n";
      return Status::Ok();
    }
    if (!o->uuid.empty()) return InvalidArgument("--uuid needs --vault (it names the volume's secrets in the vault)");
    DS_ASSIGN_OR_RETURN(auto claims, ClaimVolume(*g.env, *d, ClaimMode::kExclusive, d->header.empty()));
    DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(*g.env, d->device, d->header, true));
    const luks2::HeaderRead& st = v.header_state();
    if (!st.needs_repair()) {
      *g.out << d->device << ": both header copies are intact; nothing to repair.\n";
      return Status::Ok();
    }
    // Rewrite the copy that lost (damaged, missing or older) from the one that won, with a
    // fresh salt, keeping the winner's seqid: afterwards both copies are identical in content.
    luks2::Metadata md = v.metadata();
    const bool fix_secondary = !st.from_secondary;
    auto& salt = fix_secondary ? md.salt_secondary : md.salt_primary;
    DS_RETURN_IF_ERROR(RandomBytes(salt));
    DS_RETURN_IF_ERROR(luks2::WriteCopy(v.metadata_device(), md, fix_secondary));
    DS_ASSIGN_OR_RETURN(luks2::HeaderRead after, luks2::ReadHeader(v.metadata_device()));
    if (after.needs_repair()) return Internal(d->device + ": repair did not take");
    *g.out << d->device << ": " << (fix_secondary ? "secondary" : "primary")
           << " header copy rewritten from the " << (fix_secondary ? "primary" : "secondary") << ".\n";
    return Status::Ok();
  };
}

Runner SetupImport(CLI::App& app, Globals& g) {
  struct Opts { DeviceArgs dev; KeySource keys; std::string input; bool progress_json = false; };
  auto o = std::make_shared<Opts>();
  AddDeviceArgs(app, o->dev);
  AddKeyOptions(app, o->keys);
  app.add_option("--input", o->input, "plaintext file to write at the start of the data")->required();
  // -i is --iter-time everywhere else (as in cryptsetup): the old spelling is refused, not guessed.
  app.add_option_function<std::string>(
         "-i",
         [](const std::string&) {
           throw CLI::ValidationError("-i", "import's input is --input FILE (-i is --iter-time, as in cryptsetup)");
         },
         "")
      ->group("");
  app.add_flag("--progress-json", o->progress_json, "progress as JSON lines on stderr");
  return [o, &g]() -> Status {
    DS_ASSIGN_OR_RETURN(auto claims, ClaimVolume(*g.env, o->dev, ClaimMode::kExclusive, true));
    DS_ASSIGN_OR_RETURN(OpenedVolume ov, LoadAndUnlock(g, o->dev, o->keys, std::nullopt, true));
    DS_ASSIGN_OR_RETURN(auto src, g.env->Open(o->input, OpenOptions{}));
    std::map<int, const SecureBuffer*> keys{{ov.unlocked.digest, &ov.unlocked.key}};
    DS_ASSIGN_OR_RETURN(auto data, ov.volume.OpenData(keys));
    if (src->Size() > data->Size())
      return InvalidArgument(o->input + ": " + std::to_string(src->Size()) +
                             " bytes do not fit in the volume's " + std::to_string(data->Size()) + "-byte data segment");
    Progress p(g.err, Progress::AutoMode(isatty(2), o->progress_json), "import", src->Size());
    DS_RETURN_IF_ERROR(CopyData(*src, 0, data.get(), -1, 0, src->Size(), p));
    DS_RETURN_IF_ERROR(data->Sync());
    p.Finish();
    return Status::Ok();
  };
}

Runner SetupExport(CLI::App& app, Globals& g) {
  struct Opts { DeviceArgs dev; KeySource keys; std::string output; bool progress_json = false; };
  auto o = std::make_shared<Opts>();
  AddDeviceArgs(app, o->dev);
  AddKeyOptions(app, o->keys);
  app.add_option("--output,-o", o->output, "file to write the plaintext to, or - for stdout")->required();
  app.add_flag("--progress-json", o->progress_json, "progress as JSON lines on stderr");
  return [o, &g]() -> Status {
    // Read-only on purpose: export never writes the device. A shared claim: no writer meanwhile.
    DS_ASSIGN_OR_RETURN(auto claims, ClaimVolume(*g.env, o->dev, ClaimMode::kShared, false));
    DS_ASSIGN_OR_RETURN(OpenedVolume ov, LoadAndUnlock(g, o->dev, o->keys, std::nullopt, false));
    std::map<int, const SecureBuffer*> keys{{ov.unlocked.digest, &ov.unlocked.key}};
    DS_ASSIGN_OR_RETURN(auto data, ov.volume.OpenData(keys));
    Progress p(g.err, o->output == "-" ? Progress::Mode::kNone
                                       : Progress::AutoMode(isatty(2), o->progress_json),
               "export", data->Size());
    if (o->output == "-") {
      DS_RETURN_IF_ERROR(CopyData(*data, 0, nullptr, 1, 0, data->Size(), p));
    } else {
      DS_ASSIGN_OR_RETURN(auto out, g.env->Create(o->output, data->Size(), 0600));
      DS_RETURN_IF_ERROR(CopyData(*data, 0, out.get(), -1, 0, data->Size(), p));
      DS_RETURN_IF_ERROR(out->Sync());
    }
    p.Finish();
    return Status::Ok();
  };
}

}  // namespace ds::cli
