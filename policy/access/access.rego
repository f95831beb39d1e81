# Who may do what on the policy CMS API: the seed's permission table, as the
# single source of truth. The CMS evaluates it (compiled to wasm at build time,
# dist/policy/access/access.wasm) before it looks at anything else in a
# request; the gateway's `opa` plugin loads the same file for the CMS route
# (`cms-access`: /policies, /gateways, /budgets, /usage).
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
# Platform admins may do anything under /policies, /budgets and /usage (the
# CMS itself answers 400/404/405 for paths that are not part of the API) and
# read /gateways. Project users may list policies (the CMS shows them only
# the ones this policy lets them read) and read their own project's policy,
# its history, which gateways enforce it (status) and its candidate with
# what the gateways saw of it, never the platform policy; they may read their own project's LLM budget and its history, and
# its usage. They may evaluate their own project's live policy on an input
# (POST /policies/{name}/evaluate), never a draft: the CMS asks about a
# draft as the path ["policies", name, "evaluate", "draft"] (no route has it;
# it names the permission), which only platform admins are granted. The list of budgets (GET /budgets) is for platform admins: it
# names every project that has one.
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

under_budgets if input.path[0] == "budgets"

under_usage if input.path[0] == "usage"

# The budgets and usage part of the API (its own reasons).
budget_api if under_budgets

budget_api if under_usage

reading if input.method in {"GET", "HEAD"}

# The policy, or the project of the budget or usage, a request is about.
target := input.path[1] if under_policies

target := input.path[1] if under_budgets

target := input.path[1] if under_usage

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

action := "read_candidate" if {
	reading
	under_policies
	count(input.path) == 3
	input.path[2] == "candidate"
}

action := "read_history" if {
	reading
	under_policies
	count(input.path) in {3, 4}
	input.path[2] == "history"
}

# One input evaluated with the live version (it reads, and writes nothing).
action := "evaluate" if {
	input.method == "POST"
	under_policies
	count(input.path) == 3
	input.path[2] == "evaluate"
}

# One input evaluated with Rego the caller sends: for platform admins only.
action := "evaluate_draft" if {
	input.method == "POST"
	under_policies
	count(input.path) == 4
	input.path[2] == "evaluate"
	input.path[3] == "draft"
}

action := "read_budget" if {
	reading
	under_budgets
	count(input.path) == 2
}

action := "read_budget_remaining" if {
	reading
	under_budgets
	count(input.path) == 3
	input.path[2] == "remaining"
}

action := "read_budget_history" if {
	reading
	under_budgets
	count(input.path) in {3, 4}
	input.path[2] == "history"
}

action := "read_usage" if {
	reading
	under_usage
	count(input.path) == 2
}

allow if {
	is_platform_admin
	under_policies
}

# Budgets (writes, the list of every project's) and usage: everything for platform admins.
allow if {
	is_platform_admin
	under_budgets
}

allow if {
	is_platform_admin
	under_usage
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
project_user_action if action in {"list", "read", "read_history", "read_status", "read_candidate", "evaluate", "read_budget", "read_budget_remaining", "read_budget_history", "read_usage"}

# "platform" names the platform policy, never a project: no project user
# reaches it, whatever their claim says.
allow if {
	is_project_user
	action in {"read", "read_history", "read_status", "read_candidate", "evaluate", "read_budget", "read_budget_remaining", "read_budget_history", "read_usage"}
	target == input.user.project
	target != platform_policy
}

reason := "a verified identity is required" if {
	not has_user
} else := "platform admins may manage every budget and read all usage" if {
	allow
	is_platform_admin
	budget_api
} else := "platform admins may manage every policy" if {
	allow
	is_platform_admin
} else := "project users may read their own project's budget and usage" if {
	allow
	budget_api
} else := "project users may list policies and read their own project's policy" if {
	allow
} else := "only platform admins may manage budgets or list them" if {
	is_project_user
	under_budgets
	not project_user_action
} else := "project users may only read their own project's usage" if {
	is_project_user
	under_usage
	not project_user_action
} else := "project users may only read their own project's budget and usage" if {
	is_project_user
	budget_api
	project_user_action
} else := "only platform admins may evaluate a draft; project users may evaluate their own project's live policy" if {
	is_project_user
	action == "evaluate_draft"
} else := "only platform admins may manage policies" if {
	is_project_user
	not project_user_action
} else := "the platform policy is for platform admins only" if {
	is_project_user
	target == platform_policy
} else := "project users may only read their own project's policy" if {
	is_project_user
} else := "only platform admins and project members may use the CMS API"

status_code := 401 if not has_user

status_code := 403 if {
	has_user
	not allow
}
