"""Everything that writes on the human side, a module per entity.

- leases: the rating queue (lease_acquire, lease_skip) and its locking rules.
- judgments: a rater's submission (judgment_submit).
- tasks: outputs and the tasks over them (task_create, outputs_enqueue), their only writer.
- prompts: prompts, one (prompt_create) or imported with outputs and tasks (prompts_import).
- projects: a project from a template (project_create_from_template).

Curators' writes (review, membership) are in annotation.curation; annotation.importing reads and
validates the files that prompts_import writes.
Services raise annotation.errors.ApplicationError subclasses, which carry a code, never a status.
"""
