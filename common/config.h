// Typed experiment configs from YAML, with --set overrides and messages that point at the line.
//
// Every option struct lists its fields ONCE, in a visit() template:
//
//   struct TrainerConfig {
//     int epochs = 10;
//     template <class V> void visit(V& v) {
//       v.field("epochs", epochs, "passes over the training set", Range<int>{1, 100000});
//     }
//   };
//
// The same list drives three visitors: ConfigReader (parse + validate, unknown keys are
// errors), ConfigWriter (the resolved config written to the run directory) and ConfigLister
// (`qdistill keys`, the documentation of every key). Nothing is described twice.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/error.h"

namespace qd {

// ---- constraints a field may carry -------------------------------------------------------
template <class T>
struct Range {  // inclusive unless *_open
  T lo;
  T hi;
  bool lo_open = false;
  bool hi_open = false;
};
struct OneOf {  // for strings
  std::vector<std::string> values;
};
template <class E>
struct Choices {  // for enums: YAML names <-> values
  std::vector<std::pair<std::string, E>> names;
};
struct Required {};
inline constexpr Required kRequired{};

// ---- a YAML document plus --set overrides ------------------------------------------------
class ConfigDoc {
 public:
  // Throws ConfigError (with line) on unreadable file or YAML syntax error.
  static ConfigDoc from_file(const std::string& path);
  static ConfigDoc from_string(const std::string& yaml, const std::string& name);

  // Applies "key.path=value"; the value is YAML ("3", "0.1", "[1, 2]", "cosine").
  void set(const std::string& assignment);

  const YAML::Node& root() const { return root_; }
  const std::string& name() const { return name_; }

  // Where the value at key_path came from: "--set a.b=c" if overridden, else "FILE:LINE"
  // taken from `node` (the value, or its enclosing mapping when the key is missing).
  std::string where(const std::string& key_path, const YAML::Node& node) const;

  // Where every key that was read came from ("FILE:LINE" / "--set ..."), for checks made later
  // than parsing (a layer name that only the built model can validate, say).
  void record(const std::string& key_path, const YAML::Node& node) const { locations_[key_path] = where(key_path, node); }
  const std::map<std::string, std::string>& locations() const { return locations_; }

 private:
  std::string name_;
  YAML::Node root_;
  std::map<std::string, std::string> overrides_;  // key path -> "--set key=value"
  mutable std::map<std::string, std::string> locations_;
};

[[noreturn]] void throw_config_error(const std::string& where, const std::string& key_path,
                                     const std::string& message);

namespace config_detail {
// "'abc'", "a list", "a mapping", "nothing (empty value)"
std::string describe_node(const YAML::Node& n);
bool parse_int(const std::string& s, int64_t& out);
bool parse_double(const std::string& s, double& out);
bool parse_bool(const std::string& s, bool& out);
std::string format_double(double v);  // shortest text that reads back to the same double
std::string closest(const std::string& word, const std::vector<std::string>& candidates);

template <class T>
struct IsVector : std::false_type {};
template <class T>
struct IsVector<std::vector<T>> : std::true_type {};

template <class T>
struct TypeName;
template <>
struct TypeName<bool> { static std::string get() { return "true or false"; } };
template <>
struct TypeName<int> { static std::string get() { return "an integer"; } };
template <>
struct TypeName<int64_t> { static std::string get() { return "an integer"; } };
template <>
struct TypeName<double> { static std::string get() { return "a number"; } };
template <>
struct TypeName<std::string> { static std::string get() { return "a string"; } };
template <>
struct TypeName<std::vector<int>> { static std::string get() { return "a list of integers"; } };
template <>
struct TypeName<std::vector<double>> { static std::string get() { return "a list of numbers"; } };
template <>
struct TypeName<std::vector<std::string>> { static std::string get() { return "a list of strings"; } };

template <class T>
std::string to_text(const T& v) {
  if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
  else if constexpr (std::is_same_v<T, double>) return format_double(v);
  else if constexpr (std::is_same_v<T, std::string>) return v;
  else return std::to_string(v);
}

// Describes constraints for the "expected ..." part of a message.
template <class T>
std::string constraint_text(const Range<T>& r) {
  return concat(" in ", r.lo_open ? "(" : "[", to_text(r.lo), ", ", to_text(r.hi), r.hi_open ? ")" : "]");
}
inline std::string constraint_text(const OneOf& o) {
  std::string s = ": one of ";
  for (size_t i = 0; i < o.values.size(); ++i) s += (i ? ", " : "") + o.values[i];
  return s;
}
inline std::string constraint_text(const Required&) { return ""; }

template <class T, class U>
bool satisfies(const T& v, const Range<U>& r) {
  if constexpr (std::is_arithmetic_v<T>) {
    const bool lo_ok = r.lo_open ? v > r.lo : v >= r.lo;
    const bool hi_ok = r.hi_open ? v < r.hi : v <= r.hi;
    return lo_ok && hi_ok;
  } else {  // lists: every element
    for (const auto& x : v)
      if (!satisfies(x, r)) return false;
    return true;
  }
}
inline bool satisfies(const std::string& v, const OneOf& o) {
  for (const auto& s : o.values)
    if (s == v) return true;
  return false;
}
template <class T>
bool satisfies(const T&, const Required&) { return true; }

template <class... C>
constexpr bool has_required() { return (std::is_same_v<C, Required> || ...); }

template <class T>
struct IsChoices : std::false_type {};
template <class E>
struct IsChoices<Choices<E>> : std::true_type {};

template <class E>
std::string choice_list(const Choices<E>& c) {
  std::string s;
  for (size_t i = 0; i < c.names.size(); ++i) s += (i ? ", " : "") + c.names[i].first;
  return s;
}
template <class E, class First, class... Rest>
const Choices<E>& find_choices(const First& first, const Rest&... rest) {
  if constexpr (std::is_same_v<First, Choices<E>>) return first;
  else return find_choices<E>(rest...);
}
}  // namespace config_detail

// ---- reader: YAML -> struct, validating -------------------------------------------------
class ConfigReader {
 public:
  // `node` is the mapping of this section (may be undefined/null: all defaults apply).
  ConfigReader(const ConfigDoc& doc, YAML::Node node, std::string path);

  template <class T, class... C>
  void field(const char* key, T& value, const char* help, const C&... constraints) {
    seen_.emplace_back(key);
    const YAML::Node n = lookup(key);
    const std::string path = join(key);
    if (!n.IsDefined()) {
      if constexpr (config_detail::has_required<C...>())
        fail(path, node_, concat("missing required key; expected ", expectation<T>(constraints...)));
      return;  // the default stays
    }
    doc_->record(path, key_node(key));
    T parsed{};
    if (!parse(n, parsed, constraints...))
      fail(path, key_node(key), concat("expected ", expectation<T>(constraints...), ", got ",
                           config_detail::describe_node(n)));
    value = std::move(parsed);
  }

  template <class S, class... C>
  void section(const char* key, S& sub, const C&... flags) {
    seen_.emplace_back(key);
    const YAML::Node n = lookup(key);
    const std::string path = join(key);
    if (!n.IsDefined() || n.IsNull()) {
      if constexpr (config_detail::has_required<C...>())
        fail(path, node_, "missing required section; expected a mapping of keys");
    } else if (!n.IsMap()) {
      fail(path, key_node(key), concat("expected a mapping of keys, got ", config_detail::describe_node(n)));
    }
    ConfigReader sub_reader(*doc_, n, path);
    sub.visit(sub_reader);
    sub_reader.finish();
  }

  // A mapping whose keys the user chooses (layer-name patterns, say), each value a section of
  // type S, kept in file order. make() gives an entry's defaults before its keys are read.
  template <class S, class Make>
  void named_sections(const char* key, std::vector<std::pair<std::string, S>>& out, const char*, Make make) {
    seen_.emplace_back(key);
    const YAML::Node n = lookup(key);
    const std::string path = join(key);
    if (!n.IsDefined() || n.IsNull()) return;
    if (!n.IsMap()) fail(path, key_node(key), concat("expected a mapping of names to sections, got ",
                                                      config_detail::describe_node(n)));
    doc_->record(path, key_node(key));
    out.clear();
    for (const auto& entry : n) {
      const std::string name = entry.first.as<std::string>();
      S sub = make();
      if (!entry.second.IsNull() && !entry.second.IsMap())
        fail(path + "." + name, entry.second, concat("expected a mapping of keys, got ",
                                                     config_detail::describe_node(entry.second)));
      ConfigReader sub_reader(*doc_, entry.second, path + "." + name);
      sub.visit(sub_reader);
      sub_reader.finish();
      out.emplace_back(name, std::move(sub));
    }
  }

  // A cross-field rule; `key` names the field the message points at.
  void check(bool ok, const char* key, const std::string& message) {
    if (!ok) fail(join(key), key_node(key), message);
  }

  // Unknown keys and duplicates are errors. Called after visit().
  void finish() const;

  // Parses a whole document into `cfg` (cfg.visit at the root).
  template <class S>
  static void read(const ConfigDoc& doc, S& cfg) {
    if (doc.root().IsDefined() && !doc.root().IsNull() && !doc.root().IsMap())
      throw_config_error(doc.where("", doc.root()), "(top level)",
                         concat("expected a mapping of sections, got ",
                                config_detail::describe_node(doc.root())));
    ConfigReader r(doc, doc.root(), "");
    cfg.visit(r);
    r.finish();
  }

 private:
  YAML::Node lookup(const std::string& key) const;
  // The key's own node (its line is where errors point: an empty value has no line of its
  // own), or this section's mapping when the key is absent.
  YAML::Node key_node(const std::string& key) const;
  std::string join(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  [[noreturn]] void fail(const std::string& path, const YAML::Node& n, const std::string& msg) const;

  template <class T, class... C>
  static std::string expectation(const C&... constraints) {
    if constexpr (std::is_enum_v<T>) {
      return concat("one of: ", config_detail::choice_list(config_detail::find_choices<T>(constraints...)));
    } else {
      std::string s = config_detail::TypeName<T>::get();
      ((s += constraint_text_any(constraints)), ...);
      return s;
    }
  }
  template <class C>
  static std::string constraint_text_any(const C& c) {
    if constexpr (config_detail::IsChoices<C>::value) return "";
    else return config_detail::constraint_text(c);
  }

  template <class T, class... C>
  static bool parse(const YAML::Node& n, T& out, const C&... constraints) {
    if constexpr (std::is_enum_v<T>) {
      if (!n.IsScalar()) return false;
      for (const auto& [name, val] : config_detail::find_choices<T>(constraints...).names)
        if (name == n.Scalar()) { out = val; return true; }
      return false;
    } else {
      if (!parse_value(n, out)) return false;
      return (satisfies_any(out, constraints) && ...);
    }
  }
  template <class T, class C>
  static bool satisfies_any(const T& v, const C& c) {
    if constexpr (config_detail::IsChoices<C>::value) return true;
    else return config_detail::satisfies(v, c);
  }

  static bool parse_value(const YAML::Node& n, bool& out);
  static bool parse_value(const YAML::Node& n, int& out);
  static bool parse_value(const YAML::Node& n, int64_t& out);
  static bool parse_value(const YAML::Node& n, double& out);
  static bool parse_value(const YAML::Node& n, std::string& out);
  template <class T>
  static bool parse_value(const YAML::Node& n, std::vector<T>& out) {
    if (!n.IsSequence()) return false;
    out.clear();
    for (const auto& item : n) {
      T v{};
      if (!parse_value(item, v)) return false;
      out.push_back(v);
    }
    return true;
  }

  const ConfigDoc* doc_;
  YAML::Node node_;
  std::string path_;
  std::vector<std::string> seen_;
};

// ---- writer: struct -> YAML (the resolved config) ---------------------------------------
class ConfigWriter {
 public:
  ConfigWriter() : node_(YAML::NodeType::Map) {}

  template <class T, class... C>
  void field(const char* key, const T& value, const char*, const C&... constraints) {
    if constexpr (std::is_enum_v<T>) {
      for (const auto& [name, val] : config_detail::find_choices<T>(constraints...).names)
        if (val == value) node_[key] = name;
    } else if constexpr (config_detail::IsVector<T>::value) {
      YAML::Node seq(YAML::NodeType::Sequence);
      seq.SetStyle(YAML::EmitterStyle::Flow);
      for (const auto& x : value) seq.push_back(config_detail::to_text(x));
      node_[key] = seq;
    } else {
      node_[key] = config_detail::to_text(value);
    }
  }
  template <class S, class... C>
  void section(const char* key, S& sub, const C&...) {
    ConfigWriter w;
    sub.visit(w);
    node_[key] = w.node_;
  }
  template <class S, class Make>
  void named_sections(const char* key, std::vector<std::pair<std::string, S>>& entries, const char*, Make) {
    if (entries.empty()) return;
    YAML::Node m(YAML::NodeType::Map);
    for (auto& [name, sub] : entries) {
      ConfigWriter w;
      sub.visit(w);
      m[name] = w.node_;
    }
    node_[key] = m;
  }
  void check(bool, const char*, const std::string&) {}

  template <class S>
  static std::string write(S& cfg) {
    ConfigWriter w;
    cfg.visit(w);
    YAML::Emitter out;
    out << w.node_;
    return std::string(out.c_str()) + "\n";
  }
  const YAML::Node& node() const { return node_; }

 private:
  YAML::Node node_;
};

// ---- lister: every key with its type, default and help ----------------------------------
struct ConfigKeyDoc {
  std::string path, expected, default_value, help;
};
class ConfigLister {
 public:
  explicit ConfigLister(std::string path = "") : path_(std::move(path)) {}

  template <class T, class... C>
  void field(const char* key, const T& value, const char* help, const C&... constraints) {
    ConfigKeyDoc d;
    d.path = path_.empty() ? key : path_ + "." + key;
    d.help = help;
    if constexpr (std::is_enum_v<T>) {
      d.expected = concat("one of: ", config_detail::choice_list(config_detail::find_choices<T>(constraints...)));
      for (const auto& [name, val] : config_detail::find_choices<T>(constraints...).names)
        if (val == value) d.default_value = name;
    } else {
      d.expected = config_detail::TypeName<T>::get();
      ((d.expected += text_of(constraints)), ...);
      if constexpr (config_detail::IsVector<T>::value) {
        d.default_value = "[";
        for (size_t i = 0; i < value.size(); ++i)
          d.default_value += (i ? ", " : "") + config_detail::to_text(value[i]);
        d.default_value += "]";
      } else {
        d.default_value = config_detail::to_text(value);
      }
    }
    if (config_detail::has_required<C...>()) d.default_value = "(required)";
    keys_.push_back(std::move(d));
  }
  template <class S, class... C>
  void section(const char* key, S& sub, const C&...) {
    ConfigLister l(path_.empty() ? key : path_ + "." + key);
    sub.visit(l);
    keys_.insert(keys_.end(), l.keys_.begin(), l.keys_.end());
  }
  template <class S, class Make>
  void named_sections(const char* key, std::vector<std::pair<std::string, S>>&, const char* help, Make make) {
    const std::string path = path_.empty() ? key : path_ + "." + key;
    ConfigKeyDoc d;
    d.path = path;
    d.expected = "a mapping of names to sections";
    d.default_value = "{}";
    d.help = help;
    keys_.push_back(std::move(d));
    S sub = make();
    ConfigLister l(path + ".<name>");
    sub.visit(l);
    keys_.insert(keys_.end(), l.keys_.begin(), l.keys_.end());
  }
  void check(bool, const char*, const std::string&) {}
  const std::vector<ConfigKeyDoc>& keys() const { return keys_; }

 private:
  template <class C>
  static std::string text_of(const C& c) {
    if constexpr (config_detail::IsChoices<C>::value) return "";
    else return config_detail::constraint_text(c);
  }
  std::string path_;
  std::vector<ConfigKeyDoc> keys_;
};

// Layer-name globs (qat.layers, prune.exclude, lowrank.layers): fnmatch-style, `*` matches any run
// of characters (dots included), `?` one character.
bool layer_pattern_match(const std::string& pattern, const std::string& name);

}  // namespace qd
