"""Webhooks in the admin: curators register them for their projects and read the delivery log.

Cut down to the curated projects like the rest of the admin (annotation.admin.CuratedMixin). A
webhook's secret is shown once, in the message after it is added, and never on its page. The
delivery log is read-only; the one thing to do with a delivery is to send it again.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from annotation import webhooks
from annotation.admin import ONLY_PROJECTS, PROJECT_PATHS, CuratedMixin, ReadOnlyMixin, excerpt
from annotation.models import Webhook, WebhookDelivery

PROJECT_PATHS.update({Webhook: "project", WebhookDelivery: "webhook__project"})
RECENT_DELIVERIES = 20


class WebhookForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https")
    events = forms.MultipleChoiceField(choices=Webhook.Event.choices, widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = Webhook
        fields = ["project", "url", "events", "active"]


@admin.register(Webhook)
class WebhookAdmin(CuratedMixin, admin.ModelAdmin):
    form = WebhookForm
    list_display = ["url", "project", "event_list", "active", "created_by", "created_at", "delivery_log"]
    list_filter = [ONLY_PROJECTS, "active"]
    search_fields = ["url"]
    list_select_related = ["project", "created_by"]
    readonly_fields = ["created_by", "created_at", "recent_deliveries"]

    def get_fields(self, request, obj=None):
        fields = ["project", "url", "events", "active"]
        return fields if obj is None else [*fields, "created_by", "created_at", "recent_deliveries"]

    def save_model(self, request, obj, form, change):
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def response_add(self, request, obj, post_url_continue=None):
        self.message_user(
            request,
            f"The secret of this webhook is {obj.secret} — keep it now: it signs every delivery "
            "and is not shown again.",
            messages.WARNING,
        )
        return super().response_add(request, obj, post_url_continue)

    @admin.display(description="events")
    def event_list(self, webhook):
        return ", ".join(webhook.events)

    @admin.display(description="deliveries")
    def delivery_log(self, webhook):
        url = reverse("admin:annotation_webhookdelivery_changelist") + f"?webhook__id__exact={webhook.pk}"
        return format_html('<a href="{}">log</a>', url)

    @admin.display(description=f"last {RECENT_DELIVERIES} deliveries")
    def recent_deliveries(self, webhook):
        rows = webhook.deliveries.order_by("-id")[:RECENT_DELIVERIES]
        body = format_html_join(
            "",
            "<tr><td><a href='{}'>{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    reverse("admin:annotation_webhookdelivery_change", args=[row.pk]),
                    row.event_id,
                    row.event,
                    row.status,
                    row.attempts,
                    row.last_status_code or "",
                    excerpt(row.last_error),
                )
                for row in rows
            ),
        )
        return format_html(
            "<table><tr><th>event id</th><th>event</th><th>status</th><th>attempts</th>"
            "<th>code</th><th>error</th></tr>{}</table>{}",
            body,
            self.delivery_log(webhook),
        )


# The log is written by annotation.webhooks only.
@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyMixin, CuratedMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "webhook",
        "event",
        "event_id",
        "status",
        "attempts",
        "last_status_code",
        "error",
        "next_attempt_at",
        "created_at",
        "delivered_at",
    ]
    list_filter = [("webhook__project", admin.RelatedOnlyFieldListFilter), "status", "event", "created_at"]
    search_fields = ["=event_id", "webhook__url"]
    list_select_related = ["webhook__project"]
    date_hierarchy = "created_at"
    actions = ["redeliver"]
    fields = readonly_fields = [
        "webhook",
        "event",
        "event_id",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "next_attempt_at",
        "payload",
        "created_at",
        "updated_at",
        "delivered_at",
    ]

    @admin.display(description="error")
    def error(self, delivery):
        return excerpt(delivery.last_error)

    def has_redeliver_permission(self, request):
        # The rows offered are the curated projects' already (CuratedMixin).
        return self.has_view_permission(request)

    @admin.action(description="Send selected deliveries again", permissions=["redeliver"])
    def redeliver(self, request, queryset):
        sent = webhooks.webhook_deliveries_redeliver(deliveries=queryset.values_list("pk", flat=True))
        skipped = queryset.count() - sent
        self.message_user(
            request,
            f"{sent} deliver{'y' if sent == 1 else 'ies'} sent again"
            + (f" ({skipped} on their way already, left alone)" if skipped else ""),
            messages.SUCCESS,
        )
