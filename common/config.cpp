#include "common/config.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

namespace qd {

void throw_config_error(const std::string& where, const std::string& key_path,
                        const std::string& message) {
  throw ConfigError(concat(where, ": ", key_path, ": ", message));
}

// ---- ConfigDoc ---------------------------------------------------------------------------

ConfigDoc ConfigDoc::from_string(const std::string& yaml, const std::string& name) {
  ConfigDoc doc;
  doc.name_ = name;
  try {
    doc.root_ = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    // e.mark is 0-based; e.msg is yaml-cpp's description ("illegal map value", ...).
    throw ConfigError(concat(name, ":", e.mark.line + 1, ": YAML syntax error: ", e.msg,
                             "; fix the YAML at that line (indentation, ':' or quotes)"));
  }
  return doc;
}

ConfigDoc ConfigDoc::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  QD_CHECK(in.good(), ConfigError, path, ": cannot open config file; check the path");
  std::ostringstream ss;
  ss << in.rdbuf();
  return from_string(ss.str(), path);
}

void ConfigDoc::set(const std::string& assignment) {
  const std::string where = "--set " + assignment;
  const auto eq = assignment.find('=');
  QD_CHECK(eq != std::string::npos && eq > 0, ConfigError, where,
           ": expected key.path=value, for example --set trainer.epochs=5");
  const std::string key = assignment.substr(0, eq);
  const std::string text = assignment.substr(eq + 1);
  std::vector<std::string> parts;
  std::stringstream ks(key);
  for (std::string part; std::getline(ks, part, '.');) {
    QD_CHECK(!part.empty(), ConfigError, where, ": empty key segment in '", key,
             "'; expected key.path=value");
    parts.push_back(part);
  }
  QD_CHECK(!parts.empty() && key.back() != '.', ConfigError, where,
           ": empty key segment in '", key, "'; expected key.path=value");
  YAML::Node value;
  try {
    value = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(concat(where, ": ", key, ": value is not valid YAML (", e.msg,
                             "); quote it or fix it"));
  }
  if (!root_.IsDefined() || root_.IsNull()) root_ = YAML::Node(YAML::NodeType::Map);
  QD_CHECK(root_.IsMap(), ConfigError, where, ": the config's top level is not a mapping");
  YAML::Node cur = root_;
  std::string prefix;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    prefix += (i ? "." : "") + parts[i];
    YAML::Node next = cur[parts[i]];
    if (!next.IsDefined() || next.IsNull()) {
      cur[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next.reset(cur[parts[i]]);
    }
    QD_CHECK(next.IsMap(), ConfigError, where, ": ", prefix,
             " holds a value, not a section; cannot set ", key);
    cur.reset(next);  // rebind (plain assignment would overwrite the node's content)
  }
  cur[parts.back()] = value;
  overrides_[key] = where;
}

std::string ConfigDoc::where(const std::string& key_path, const YAML::Node& node) const {
  // The longest overridden prefix of key_path wins ("trainer" covers "trainer.epochs").
  for (std::string p = key_path; !p.empty();) {
    auto it = overrides_.find(p);
    if (it != overrides_.end()) return it->second;
    const auto dot = p.rfind('.');
    if (dot == std::string::npos) break;
    p.resize(dot);
  }
  if (node.IsDefined() && node.Mark().line >= 0 && !node.Mark().is_null())
    return concat(name_, ":", node.Mark().line + 1);
  return name_;
}

// ---- detail ------------------------------------------------------------------------------

namespace config_detail {

std::string describe_node(const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) return "nothing (empty value)";
  if (n.IsSequence()) return "a list";
  if (n.IsMap()) return "a mapping";
  return "'" + n.Scalar() + "'";
}

bool parse_int(const std::string& s, int64_t& out) {
  if (s.empty()) return false;
  const char* b = s.data();
  const char* e = s.data() + s.size();
  if (*b == '+') ++b;
  auto [p, ec] = std::from_chars(b, e, out);
  return ec == std::errc() && p == e;
}

bool parse_double(const std::string& s, double& out) {
  if (s.empty()) return false;
  errno = 0;
  char* end = nullptr;
  out = std::strtod(s.c_str(), &end);
  return errno == 0 && end == s.c_str() + s.size() && std::isfinite(out);
}

bool parse_bool(const std::string& s, bool& out) {
  if (s == "true" || s == "True" || s == "TRUE") return out = true, true;
  if (s == "false" || s == "False" || s == "FALSE") return out = false, true;
  return false;
}

std::string format_double(double v) {
  char buf[64];
  auto [p, ec] = std::to_chars(buf, buf + sizeof(buf), v);
  std::string s(buf, p);
  // Keep it visibly a number in YAML ("1" would read back as an int: harmless, but "1.0" is clearer).
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

static size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string closest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::max<size_t>(2, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    const size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  return best;
}

}  // namespace config_detail

// ---- ConfigReader ------------------------------------------------------------------------

ConfigReader::ConfigReader(const ConfigDoc& doc, YAML::Node node, std::string path)
    : doc_(&doc), node_(std::move(node)), path_(std::move(path)) {}

YAML::Node ConfigReader::lookup(const std::string& key) const {
  if (!node_.IsDefined() || !node_.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
  for (const auto& kv : node_)
    if (kv.first.IsScalar() && kv.first.Scalar() == key) return kv.second;
  return YAML::Node(YAML::NodeType::Undefined);
}

YAML::Node ConfigReader::key_node(const std::string& key) const {
  if (node_.IsDefined() && node_.IsMap())
    for (const auto& kv : node_)
      if (kv.first.IsScalar() && kv.first.Scalar() == key) return kv.first;
  return node_;
}

void ConfigReader::fail(const std::string& path, const YAML::Node& n, const std::string& msg) const {
  throw_config_error(doc_->where(path, n), path, msg);
}

void ConfigReader::finish() const {
  if (!node_.IsDefined() || !node_.IsMap()) return;
  std::set<std::string> keys;
  for (const auto& kv : node_) {
    const std::string key = kv.first.IsScalar() ? kv.first.Scalar() : std::string("?");
    const std::string path = join(key);
    if (!keys.insert(key).second)
      throw_config_error(doc_->where(path, kv.first), path,
                         "duplicate key; each key may appear once per section");
    if (std::find(seen_.begin(), seen_.end(), key) != seen_.end()) continue;
    std::string valid;
    for (size_t i = 0; i < seen_.size(); ++i) valid += (i ? ", " : "") + seen_[i];
    const std::string guess = config_detail::closest(key, seen_);
    throw_config_error(doc_->where(path, kv.first), path,
                       concat("unknown key", guess.empty() ? "" : " (did you mean '" + guess + "'?)",
                              "; valid keys", path_.empty() ? "" : " in " + path_, ": ", valid));
  }
}

bool ConfigReader::parse_value(const YAML::Node& n, bool& out) {
  return n.IsScalar() && config_detail::parse_bool(n.Scalar(), out);
}
bool ConfigReader::parse_value(const YAML::Node& n, int64_t& out) {
  return n.IsScalar() && config_detail::parse_int(n.Scalar(), out);
}
bool ConfigReader::parse_value(const YAML::Node& n, int& out) {
  int64_t v = 0;
  if (!parse_value(n, v) || v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max())
    return false;
  out = static_cast<int>(v);
  return true;
}
bool ConfigReader::parse_value(const YAML::Node& n, double& out) {
  return n.IsScalar() && config_detail::parse_double(n.Scalar(), out);
}
bool ConfigReader::parse_value(const YAML::Node& n, std::string& out) {
  if (!n.IsScalar()) return false;
  out = n.Scalar();
  return true;
}

bool layer_pattern_match(const std::string& pattern, const std::string& name) {
  // Iterative glob with backtracking to the last '*'.
  size_t p = 0, n = 0, star = std::string::npos, mark = 0;
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == name[n])) {
      ++p, ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = n;
    } else if (star != std::string::npos) {
      p = star + 1;
      n = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

}  // namespace qd
