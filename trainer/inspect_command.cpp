#include "trainer/inspect_command.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "formats/gguf.h"
#include "formats/safetensors.h"

namespace qd {

namespace fs = std::filesystem;
using fmt::GgufFile;
using fmt::GgufValue;
using fmt::GgufValueType;
using fmt::SafetensorsFile;

namespace {

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// A printable string: control bytes and quotes escaped, long ones cut.
std::string quoted(const std::string& s, size_t max = 60) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < max; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') out += '\\', out += static_cast<char>(c);
    else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else out += static_cast<char>(c);
  }
  return out + (s.size() > max ? "...\"" : "\"");
}

// A metadata value as JSON: scalars as themselves, arrays as their length and first values.
nlohmann::json value_json(const GgufValue& v) {
  switch (v.type) {
    case GgufValueType::kString: return v.s;
    case GgufValueType::kFloat32: case GgufValueType::kFloat64: return v.f;
    case GgufValueType::kBool: return v.i != 0;
    case GgufValueType::kArray: {
      nlohmann::json first = nlohmann::json::array();
      for (size_t i = 0; i < 8 && i < v.array_size(); ++i) {
        if (!v.strings.empty()) first.push_back(v.strings[i]);
        else if (!v.floats.empty()) first.push_back(v.floats[i]);
        else first.push_back(v.ints[i]);
      }
      return {{"array_of", fmt::gguf_type_name(v.array_type)}, {"length", v.array_size()}, {"first", first}};
    }
    default: return v.i;
  }
}

std::string value_text(const GgufValue& v) {
  if (v.type == GgufValueType::kString) return quoted(v.s);
  if (v.type != GgufValueType::kArray) return value_json(v).dump();
  std::string s = "[" + std::to_string(v.array_size()) + " " + fmt::gguf_type_name(v.array_type) + (v.array_size() == 1 ? "" : "s");
  for (size_t i = 0; i < 3 && i < v.array_size(); ++i)
    s += (i ? ", " : ": ") + (!v.strings.empty() ? quoted(v.strings[i], 20)
                                                 : !v.floats.empty() ? nlohmann::json(v.floats[i]).dump()
                                                                     : std::to_string(v.ints[i]));
  return s + (v.array_size() > 3 ? ", ...]" : "]");
}

int inspect_gguf(const std::string& path, bool json) {
  const GgufFile f(path);
  int64_t values = 0;
  std::map<std::string, int> types;
  for (const auto& t : f.tensors()) values += t.numel(), ++types[fmt::ggml_type_name(t.type)];
  if (json) {
    nlohmann::json j = {{"path", path}, {"format", "gguf"}, {"version", f.version()}, {"alignment", f.alignment()}};
    for (const auto& [k, v] : f.metadata()) j["metadata"][k] = value_json(v);
    j["tensors"] = nlohmann::json::array();
    for (const auto& t : f.tensors())
      j["tensors"].push_back({{"name", t.name}, {"type", fmt::ggml_type_name(t.type)}, {"shape", t.shape()}, {"bytes", t.bytes}});
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::string mix;
  for (const auto& [name, n] : types) mix += (mix.empty() ? "" : ", ") + name + " " + std::to_string(n);
  std::printf("%s: GGUF v%u, alignment %zu, %zu tensors (%lld values; %s), %zu metadata values\nmetadata:\n", path.c_str(),
              f.version(), f.alignment(), f.tensors().size(), static_cast<long long>(values), mix.c_str(),
              f.metadata().size());
  for (const auto& [k, v] : f.metadata()) std::printf("  %-44s %s\n", k.c_str(), value_text(v).c_str());
  std::printf("tensors (shape row-major, ne reversed):\n");
  for (const auto& t : f.tensors())
    std::printf("  %-44s %-5s %s\n", t.name.c_str(), fmt::ggml_type_name(t.type), shape_text(t.shape()).c_str());
  return 0;
}

int inspect_safetensors(const std::string& path, bool json) {
  const SafetensorsFile f(path);
  int64_t values = 0;
  for (const auto& t : f.tensors()) values += t.numel();
  if (json) {
    nlohmann::json j = {{"path", path}, {"format", "safetensors"}, {"metadata", f.metadata()}};
    j["tensors"] = nlohmann::json::array();
    for (const auto& t : f.tensors())
      j["tensors"].push_back({{"name", t.name}, {"type", fmt::dtype_name(t.dtype)}, {"shape", t.shape}, {"bytes", t.bytes}});
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::printf("%s: safetensors, %zu tensors (%lld values), %zu metadata values\n", path.c_str(), f.tensors().size(),
              static_cast<long long>(values), f.metadata().size());
  for (const auto& [k, v] : f.metadata()) std::printf("  %-44s %s\n", k.c_str(), quoted(v).c_str());
  for (const auto& t : f.tensors())
    std::printf("  %-44s %-5s %s\n", t.name.c_str(), fmt::dtype_name(t.dtype), shape_text(t.shape).c_str());
  return 0;
}

}  // namespace

int run_inspect(const InspectCommand& cmd) {
  std::string path = cmd.path;
  if (fs::is_directory(path)) {
    const fs::path st = fs::path(path) / "model.safetensors";
    if (!fs::is_regular_file(st))
      throw fmt::FormatError(path + ": a folder without model.safetensors; give a .safetensors or .gguf file");
    path = st.string();
  }
  char magic[4] = {};
  std::ifstream(path, std::ios::binary).read(magic, 4);
  return std::memcmp(magic, "GGUF", 4) == 0 ? inspect_gguf(path, cmd.json) : inspect_safetensors(path, cmd.json);
}

}  // namespace qd
