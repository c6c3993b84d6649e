/* A sched_yield() that returns at once, preloaded (LD_PRELOAD) into the
 * free-threaded CPython 3.13 suites only (tools/matrix.sh).
 *
 * CPython 3.13t locks an object's critical section again when a method running
 * under it calls another that takes the same one (a buffered file's close()
 * calling its flush(), at every import): the second lock spins, calling
 * sched_yield() about 40 times, before it parks and so lets the first go. On an
 * idle machine each call returns at once; on a loaded one each gives the CPU
 * away for a time slice: collecting one test module took 98 s instead of 4
 * beside three CPU hogs, and a suite 580 s instead of 230. Later CPythons skip
 * the second lock (Python/critical_section.c, "locking the same object
 * recursively"). Without the yields the spin ends after 40 short turns, then
 * parks as before: the same locking, without the time given away.
 */
#include <sched.h>

int sched_yield(void) { return 0; }
