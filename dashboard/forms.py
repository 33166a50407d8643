from django import forms


class CancelForm(forms.Form):
    comment = forms.CharField(
        max_length=2000, strip=True,
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "Why are you cancelling?"}),
        error_messages={"required": "A comment is required to cancel a run."},
    )
    force_cancel = forms.BooleanField(required=False)


class CommentForm(forms.Form):
    comment = forms.CharField(max_length=2000, strip=True, required=False,
                              widget=forms.Textarea(attrs={"rows": 2}))


class ApproveForm(CommentForm):
    """Approve, with one field per variable the waiting run asks for (`var:<key>`)."""

    PREFIX = "var:"

    def __init__(self, *args, requested=(), **kwargs):
        super().__init__(*args, **kwargs)
        for var in requested:
            self.fields[self.PREFIX + var["key"]] = forms.CharField(
                label=var["key"], initial=var["value"], help_text=var["description"],
                max_length=2000, required=False, strip=False)

    def variables(self) -> dict[str, str]:
        """The variables given; an empty field is left out (the run's own value applies)."""
        return {name[len(self.PREFIX):]: value for name, value in self.cleaned_data.items()
                if name.startswith(self.PREFIX) and value != ""}


class TokenForm(forms.Form):
    EXPIRY_DAYS = [(7, "7 days"), (30, "30 days"), (90, "90 days"), (365, "1 year")]

    name = forms.CharField(max_length=100, label="Token name",
                           widget=forms.TextInput(attrs={"placeholder": "e.g. chat bot"}))
    # Not required: a form posted without it (an older page) gets the default.
    expires_in = forms.TypedChoiceField(choices=EXPIRY_DAYS, coerce=int, initial=90,
                                        required=False, empty_value=90, label="Expires in")
    read_only = forms.BooleanField(required=False, label="Read only (cannot act)")
