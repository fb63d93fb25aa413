#pragma once
// The GPU emulator's CUB: what the backend uses (cub/device/device_radix_sort.cuh).
#include "device/device_radix_sort.cuh"
