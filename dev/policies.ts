// Rego the tests and the benchmarks share: policies whose cost they need to
// control, not ones any deployment would write.

/**
 * A project policy whose work grows with n * n (n from the request's query)
 * and allocates little, so that fuel or a deadline stops it, not memory:
 * about 100 ms for n = 500 on a 2-core machine (burning a little more than
 * the default fuel), seconds for n = 4000, at once for a small n.
 */
export const NESTED_LOOP_REGO = `package project.authz
import rego.v1
default allow := false
r := numbers.range(1, to_number(input.request.query.n))
allow if {
  every a in r {
    every b in r {
      a + b > 0
    }
  }
}
`;
