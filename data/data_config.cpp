#include "data/data_config.h"
// DataConfig is header-only (its visit() is a template); this unit keeps one object per folder
// pair as CMake lists it, and is where non-template data-config helpers go.
