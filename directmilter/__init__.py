"""directmilter: a Direct Project Security/Trust Agent for Postfix and Sendmail, as a milter."""

__version__ = "0.1.0"
