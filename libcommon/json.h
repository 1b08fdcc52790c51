/* json.h: the two pieces of JSON output every tool needs. */
#ifndef GD_JSON_H
#define GD_JSON_H

#include <stdio.h>

/* A string with quotes and escapes. */
void json_write_string(FILE *f, const char *s);
/* A number with 17 significant digits (round-trips a double); null when
 * it is not finite, since JSON has no NaN. */
void json_write_number(FILE *f, double v);

#endif
