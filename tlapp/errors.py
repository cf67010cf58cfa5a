"""The one exception type for problems the user can fix."""


class TlappError(Exception):
    """A problem with the user's input or environment, with a hint that says what to do.

    Pages show it with ``st.error``; the CLI prints it and exits with status 2.
    Programming errors stay ordinary exceptions.
    """

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()
