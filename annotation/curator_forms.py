"""Forms of the curator pages and the admin's review: they validate input, annotation.curation acts on it."""

from __future__ import annotations

import json

from django import forms

from annotation import importing
from annotation.curation import REASON_REQUIRED
from annotation.models import Membership, Project
from annotation.services.projects import PROJECT_TEMPLATES

REASON_MAX = 2000


class ReviewForm(forms.Form):
    reason = forms.CharField(
        max_length=REASON_MAX,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Recorded in the audit log with your name and the time.",
    )

    def __init__(self, *args, status: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["reason"].required = status in REASON_REQUIRED
        if status in REASON_REQUIRED:
            self.fields["reason"].error_messages["required"] = "Say why: the reason goes in the audit log."


class MemberAddForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.RATER)
    create_account = forms.BooleanField(
        required=False,
        label="Create a new account",
        help_text="A password is generated and shown once, on the next page.",
    )


class DeactivateForm(forms.Form):
    exclude_judgments = forms.BooleanField(required=False, label="Also exclude their judgments from training")
    reason = forms.CharField(max_length=REASON_MAX, widget=forms.TextInput(attrs={"placeholder": "Reason"}))


class ImportForm(forms.Form):
    file = forms.FileField(help_text="JSONL or CSV, UTF-8. One bad line and nothing is imported.")
    format = forms.ChoiceField(
        choices=[("", "Guess from the file"), *[(f, f.upper()) for f in importing.FORMATS]], required=False
    )
    tasks = forms.ChoiceField(
        choices=[
            ("", "Single-output tasks if the file has outputs"),
            ("none", "No tasks (prompts and outputs only)"),
            ("single", "A rating task per output"),
            ("pairwise", "A comparison per prompt (2 outputs each)"),
            ("ranking", "A ranking per prompt (2–10 outputs)"),
        ],
        required=False,
    )
    mapping = forms.CharField(
        required=False,
        widget=forms.TextInput(attrs={"placeholder": '{"text": "post", "external_id": "id"}'}),
        help_text="Optional: your column names, as JSON {our_field: your_field}.",
    )

    def clean_mapping(self) -> dict | None:
        raw = self.cleaned_data["mapping"].strip()
        if not raw:
            return None
        try:
            mapping = json.loads(raw)
        except json.JSONDecodeError as error:
            raise forms.ValidationError(f"not valid JSON ({error.msg})") from error
        try:
            return importing.clean_mapping(mapping)
        except importing.ImportFileError as error:
            raise forms.ValidationError(str(error)) from error


class ProjectAddForm(forms.ModelForm):
    """The admin's new-project form, with a template that writes the questions and guidelines."""

    template = forms.ChoiceField(
        choices=[("", "None: write the questions below")]
        + [(name, label) for name, (label, _) in PROJECT_TEMPLATES.items()],
        required=False,
        help_text="Sets the questions, and the guidelines unless you write your own.",
    )

    class Meta:
        model = Project
        # The admin passes the fields it shows; these are the ones a template leaves to the curator.
        fields = ["name", "description", "kind", "guidelines", "questions", "overlap"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "questions" in self.fields:
            self.fields["questions"].required = False  # a template may write them

    def clean(self):
        cleaned = super().clean()
        template = cleaned.get("template")
        if not template:
            if not cleaned.get("questions") and "questions" not in self.errors:
                self.add_error("questions", "Write the questions, or choose a template.")
            return cleaned
        if cleaned.get("questions"):
            self.add_error("template", "Choose a template or write the questions, not both.")
            return cleaned
        fields = PROJECT_TEMPLATES[template][1]()
        cleaned["questions"] = fields["questions"]
        if not (cleaned.get("guidelines") or "").strip():
            cleaned["guidelines"] = fields["guidelines"]
        return cleaned
