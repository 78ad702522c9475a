// Errors: exceptions whose messages say what went wrong, where, and what to do.
//
// qd::UserError and its subclasses mean "bad input" (config, data, arguments): the CLI maps
// them to exit code 2 with one message line. Everything else is exit code 1.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace qd {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bad input from the user: exit code 2.
class UserError : public Error {
 public:
  using Error::Error;
};

// A config file or --set override is wrong. Message: "FILE:LINE: key.path: what; expected".
class ConfigError : public UserError {
 public:
  using UserError::UserError;
};

// A data file is missing, truncated or corrupt.
class DataError : public UserError {
 public:
  using UserError::UserError;
};

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail
using detail::concat;

// Exit code the CLI uses for an exception: 2 for bad input, 1 otherwise.
int exit_code_for(const std::exception& e);

}  // namespace qd

// QD_CHECK(cond, ErrorType, message parts...): throws ErrorType(concat(parts)) when !cond.
#define QD_CHECK(cond, ErrorType, ...)                         \
  do {                                                         \
    if (!(cond)) throw ErrorType(::qd::detail::concat(__VA_ARGS__)); \
  } while (0)
