#include "luks2/dump.h"

#include <sstream>

namespace ds::luks2 {

namespace {
Json CopyJson(const CopyStatus& c) {
  Json j{{"offset", c.offset}, {"status", c.valid ? "ok" : (c.present ? "damaged" : "missing")},
         {"seqid", c.seqid}};
  if (!c.valid) j["error"] = c.error;
  return j;
}
}  // namespace

Json DumpJson(const HeaderRead& h) {
  const Metadata& md = h.md;
  Json j;
  j["schema_version"] = 1;
  j["version"] = 2;
  j["uuid"] = md.uuid;
  j["label"] = md.label;
  j["subsystem"] = md.subsystem;
  j["seqid"] = md.seqid;
  j["checksum_alg"] = md.csum_alg;
  j["metadata_size"] = md.hdr_size;
  j["keyslots_size"] = md.keyslots_size();
  Json flags = Json::array();
  if (md.json["config"].contains("flags")) flags = md.json["config"]["flags"];
  j["flags"] = flags;
  j["requirements"] = md.requirements();
  j["header_copies"] = {{"primary", CopyJson(h.primary)}, {"secondary", CopyJson(h.secondary)},
                        {"in_use", h.from_secondary ? "secondary" : "primary"}};
  j["segments"] = Json::array();
  for (const auto& s : Segments(md)) {
    Json o{{"id", s.id}, {"type", s.type}, {"offset", s.offset}};
    o["size"] = s.size ? Json(*s.size) : Json("dynamic");
    if (s.type == "crypt") {
      o["iv_tweak"] = s.iv_tweak;
      o["cipher"] = s.cipher;
      o["sector_size"] = s.sector_size;
    }
    o["flags"] = s.flags;
    j["segments"].push_back(o);
  }
  j["keyslots"] = Json::array();
  for (const auto& k : Keyslots(md)) {
    Json o{{"id", k.id}, {"type", k.type}, {"key_size", k.key_size}};
    o["priority"] = k.priority.value_or(1);
    if (k.type == "luks2") {
      Json kdf{{"type", k.kdf.type}};
      if (k.kdf.type == "pbkdf2") {
        kdf["hash"] = k.kdf.hash;
        kdf["iterations"] = k.kdf.iterations;
      } else {
        kdf["time"] = k.kdf.time;
        kdf["memory"] = k.kdf.memory_kib;
        kdf["cpus"] = k.kdf.cpus;
      }
      o["kdf"] = kdf;
      o["af"] = {{"type", "luks1"}, {"stripes", k.af_stripes}, {"hash", k.af_hash}};
    } else if (k.type == "reencrypt") {
      const Json& raw = md.json["keyslots"][std::to_string(k.id)];
      o["mode"] = StrOr(raw, "mode");
      o["direction"] = StrOr(raw, "direction");
    }
    Json area{{"type", k.area_type}, {"offset", k.area_offset}, {"size", k.area_size}};
    if (!k.area_cipher.empty()) {
      area["cipher"] = k.area_cipher;
      area["key_size"] = k.area_key_size;
    }
    if (k.type == "reencrypt") {  // checksum resilience: its hash and block (as luksDump shows them)
      const Json& raw = md.json["keyslots"][std::to_string(k.id)]["area"];
      if (raw.contains("hash")) area["hash"] = StrOr(raw, "hash");
      if (raw.contains("sector_size") && raw["sector_size"].is_number_unsigned()) area["sector_size"] = raw["sector_size"];
    }
    o["area"] = area;
    if (!k.unusable.empty()) o["unusable"] = k.unusable;
    auto d = DigestOfKeyslot(md, k.id);
    o["digest"] = d ? Json(d->id) : Json(nullptr);
    j["keyslots"].push_back(o);
  }
  j["tokens"] = Json::array();
  for (const auto& t : Tokens(md))
    j["tokens"].push_back({{"id", t.id}, {"type", t.type}, {"keyslots", t.keyslots}, {"json", t.raw}});
  j["digests"] = Json::array();
  for (const auto& d : Digests(md)) {
    Json o{{"id", d.id}, {"type", d.type}, {"keyslots", d.keyslots}, {"segments", d.segments}};
    if (d.type == "pbkdf2") {
      o["hash"] = d.hash;
      o["iterations"] = d.iterations;
    }
    j["digests"].push_back(o);
  }
  return j;
}

std::string DumpText(const HeaderRead& h) {
  const Metadata& md = h.md;
  std::ostringstream o;
  o << "LUKS header information\n";
  o << "Version:       \t2\n";
  o << "Epoch:         \t" << md.seqid << "\n";
  o << "Metadata area: \t" << md.hdr_size << " [bytes]\n";
  o << "Keyslots area: \t" << md.keyslots_size() << " [bytes]\n";
  o << "UUID:          \t" << md.uuid << "\n";
  o << "Label:         \t" << (md.label.empty() ? "(no label)" : md.label) << "\n";
  o << "Subsystem:     \t" << (md.subsystem.empty() ? "(no subsystem)" : md.subsystem) << "\n";
  auto req = md.requirements();
  o << "Requirements:  \t";
  if (req.empty()) o << "(no requirements)";
  for (size_t i = 0; i < req.size(); ++i) o << (i ? " " : "") << req[i];
  o << "\nHeader copies: \tprimary " << (h.primary.valid ? "ok" : "DAMAGED: " + h.primary.error)
    << ", secondary " << (h.secondary.valid ? "ok" : "DAMAGED: " + h.secondary.error) << "\n\n";
  o << "Data segments:\n";
  for (const auto& s : Segments(md)) {
    o << "  " << s.id << ": " << s.type << "\n";
    o << "\toffset: " << s.offset << " [bytes]\n";
    o << "\tlength: " << (s.size ? std::to_string(*s.size) + " [bytes]" : "(whole device)") << "\n";
    if (s.type == "crypt") {
      o << "\tcipher: " << s.cipher << "\n";
      o << "\tsector: " << s.sector_size << " [bytes]\n";
    }
    if (!s.flags.empty()) {
      o << "\tflags : ";
      for (const auto& f : s.flags) o << f << " ";
      o << "\n";
    }
  }
  o << "\nKeyslots:\n";
  for (const auto& k : Keyslots(md)) {
    o << "  " << k.id << ": " << k.type << "\n";
    if (k.type == "luks2") {
      o << "\tKey:        " << k.key_size * 8 << " bits\n";
      int p = k.priority.value_or(1);
      o << "\tPriority:   " << (p == 0 ? "ignored" : p == 2 ? "preferred" : "normal") << "\n";
      o << "\tCipher:     " << k.area_cipher << "\n";
      o << "\tCipher key: " << k.area_key_size * 8 << " bits\n";
      o << "\tPBKDF:      " << k.kdf.type << "\n";
      if (k.kdf.type == "pbkdf2") {
        o << "\tHash:       " << k.kdf.hash << "\n";
        o << "\tIterations: " << k.kdf.iterations << "\n";
      } else {
        o << "\tTime cost:  " << k.kdf.time << "\n";
        o << "\tMemory:     " << k.kdf.memory_kib << "\n";
        o << "\tThreads:    " << k.kdf.cpus << "\n";
      }
      o << "\tAF stripes: " << k.af_stripes << "\n";
      o << "\tAF hash:    " << k.af_hash << "\n";
    } else {
      o << "\tMode:       " << StrOr(md.json["keyslots"][std::to_string(k.id)], "mode") << "\n";
      o << "\tResilience: " << k.area_type << "\n";
      const Json& raw = md.json["keyslots"][std::to_string(k.id)]["area"];
      if (raw.contains("hash")) o << "\tHash:       " << StrOr(raw, "hash") << "\n";
      if (raw.contains("sector_size") && raw["sector_size"].is_number_unsigned())
        o << "\tHash data:  " << raw["sector_size"].get<uint64_t>() << " [bytes/sector]\n";
    }
    o << "\tArea offset:" << k.area_offset << " [bytes]\n";
    o << "\tArea length:" << k.area_size << " [bytes]\n";
    if (auto d = DigestOfKeyslot(md, k.id)) o << "\tDigest ID:  " << d->id << "\n";
    if (!k.unusable.empty()) o << "\tUnusable:   " << k.unusable << "\n";
  }
  o << "Tokens:\n";
  for (const auto& t : Tokens(md)) {
    o << "  " << t.id << ": " << t.type << "\n\tKeyslot:    ";
    for (int k : t.keyslots) o << k << " ";
    o << "\n";
  }
  o << "Digests:\n";
  for (const auto& d : Digests(md)) {
    o << "  " << d.id << ": " << d.type << "\n";
    o << "\tHash:       " << d.hash << "\n";
    o << "\tIterations: " << d.iterations << "\n";
  }
  return o.str();
}

}  // namespace ds::luks2
