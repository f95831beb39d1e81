# Who may do what on the policy CMS API: the seed's permission table, as the
# single source of truth. The CMS evaluates it (compiled to wasm at build time,
# dist/policy/access/access.wasm) before it looks at anything else in a
# request; the gateway's `opa` plugin loads the same file for /policies/*.
#
# Input contract
#   input.method  HTTP method, upper case: "GET", "HEAD", "PUT", "DELETE", ...
#   input.path    the URL path as percent-decoded segments, without the empty
#                 leading one: "/policies/team-a/history" -> ["policies", "team-a", "history"]
#   input.user    the verified identity; absent when the request has no valid token
#     .sub        string
#     .role       string or null: "platform_admin" makes a Platform Admin; anyone
#                 else with a project claim is a Project User of that project
#     .project    string or null: the project a project user belongs to
#
# Output: the package document, entrypoint "gatehouse/cms/access"
#   allow         true only when a rule below grants the request
#   reason        why, in words safe to show the caller
#   status_code   401 without a user, 403 when refused; absent when allowed
#
# Platform admins may do anything under /policies (the CMS itself answers
# 400/404/405 for paths that are not part of the API) and read /gateways.
# Project users may list policies (the CMS shows them only the ones this
# policy lets them read) and read their own project's policy, its history and
# which gateways enforce it (status), never the platform policy.
package gatehouse.cms.access

default allow := false

platform_policy := "platform"

has_user if input.user

is_platform_admin if input.user.role == "platform_admin"

is_project_user if {
	not is_platform_admin
	is_string(input.user.project)
	input.user.project != ""
}

under_policies if input.path[0] == "policies"

reading if input.method in {"GET", "HEAD"}

# The policy a request is about.
target := input.path[1] if under_policies

action := "list" if {
	reading
	input.path == ["policies"]
}

action := "read" if {
	reading
	under_policies
	count(input.path) == 2
}

action := "read_status" if {
	reading
	under_policies
	count(input.path) == 3
	input.path[2] == "status"
}

action := "read_history" if {
	reading
	under_policies
	count(input.path) in {3, 4}
	input.path[2] == "history"
}

allow if {
	is_platform_admin
	under_policies
}

# The gateways and what each enforces: for platform admins.
allow if {
	is_platform_admin
	input.path[0] == "gateways"
}

allow if {
	is_project_user
	action == "list"
}

# What project users may ever do; everything else is for platform admins.
project_user_action if action in {"list", "read", "read_history", "read_status"}

allow if {
	is_project_user
	action in {"read", "read_history", "read_status"}
	target == input.user.project
	target != platform_policy
}

reason := "a verified identity is required" if {
	not has_user
} else := "platform admins may manage every policy" if {
	allow
	is_platform_admin
} else := "project users may list policies and read their own project's policy" if {
	allow
} else := "only platform admins may manage policies" if {
	is_project_user
	not project_user_action
} else := "the platform policy is for platform admins only" if {
	is_project_user
	target == platform_policy
} else := "project users may only read their own project's policy" if {
	is_project_user
} else := "only platform admins and project members may use the policy API"

status_code := 401 if not has_user

status_code := 403 if {
	has_user
	not allow
}
