import json

from django import forms

from .models import MaskingRule


class WordsField(forms.CharField):
    """One word, phrase or key name per line."""

    widget = forms.Textarea(attrs={"rows": 4})

    def prepare_value(self, value: object) -> object:
        if isinstance(value, list):
            return "\n".join(str(v) for v in value)
        return value

    def to_python(self, value: object) -> list[str]:  # type: ignore[override]
        text = super().to_python(value) or ""
        return [line.strip() for line in str(text).splitlines() if line.strip()]


class MaskingRuleForm(forms.ModelForm):
    words = WordsField(required=False, help_text="One per line.")

    class Meta:
        model = MaskingRule
        fields = [
            "name",
            "entity",
            "kind",
            "detector",
            "pattern",
            "words",
            "style",
            "scope",
            "connection",
            "tool",
            "mask_for_agent",
            "enabled",
            "order",
        ]
        widgets = {"pattern": forms.TextInput()}


class PreviewForm(forms.Form):
    sample = forms.CharField(widget=forms.Textarea(attrs={"rows": 8}), max_length=200_000)
    connection = forms.IntegerField(required=False)
    tool = forms.CharField(required=False, max_length=200)

    def sample_value(self) -> object:
        """JSON when the sample parses as JSON, the text otherwise."""
        text = self.cleaned_data["sample"]
        try:
            return json.loads(text)
        except ValueError:
            return text
