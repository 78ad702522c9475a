#include "trainer/cli.h"

int main(int argc, char** argv) { return qd::run_cli(argc, argv); }
