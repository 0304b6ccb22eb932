// What `diskseal dump` shows: a stable JSON document (schema in docs/json-schemas.md, version 1)
// and cryptsetup-like text. Pure functions of the header read.
#pragma once

#include <string>

#include "luks2/header_io.h"

namespace ds::luks2 {

Json DumpJson(const HeaderRead& h);
std::string DumpText(const HeaderRead& h);

}  // namespace ds::luks2
