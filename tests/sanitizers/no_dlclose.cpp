// Preloaded by scripts/test_sanitizers.sh in the AddressSanitizer run: dlclose() does nothing.
// Open MPI dlopen()s its components (mca_*.so) in MPI_Init and dlclose()s them in MPI_Finalize; what
// they allocated and never freed then shows in LeakSanitizer's reports as "<unknown module>", which
// no suppression can name. Keeping them mapped lets tests/sanitizers/lsan.supp name Open MPI's
// modules precisely instead of hiding every leak. ampipe itself never calls dlclose().
extern "C" int dlclose(void*) { return 0; }
