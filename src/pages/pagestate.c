// SPDX-License-Identifier: MIT
/* pagestate: the destination's per-page atomic state map. */
#include <stdlib.h>

#include "base/error.h"
#include "pages/pagestate.h"
#include "base/sys.h"

int pagestate_init(struct pagestate *ps, size_t nr_pages)
{
	ps->state = sys_zalloc(nr_pages * sizeof(*ps->state));
	if (!ps->state)
		return ferry_fail(-ENOMEM, "page state map for %zu pages",
				  nr_pages);
	ps->nr_pages = nr_pages;
	return 0;
}

void pagestate_fini(struct pagestate *ps)
{
	free(ps->state);
	ps->state = NULL;
	ps->nr_pages = 0;
}

size_t pagestate_count(const struct pagestate *ps, enum page_state s)
{
	size_t n = 0;

	for (size_t p = 0; p < ps->nr_pages; p++)
		n += pagestate_get(ps, p) == s;
	return n;
}
